{
  lib,
  config,
  options,
  rendered,
  check,
  ...
}:
let
  cfg = config.bcm.monerod;
  h = import ./lib.nix { inherit lib rendered; };
  conf = "monerod.conf";
  unit = config.systemd.services.monerod;
  loopback = [
    "127.0.0.0/8"
    "::1/128"
  ];
in
lib.optionals cfg.enable (
  [
    (check "monerod: data on ${cfg.dataDir}${lib.optionalString (h.isDefault options.bcm.monerod.dataDir) " (bulk tier)"}" (
      h.hasLine conf "data-dir=${cfg.dataDir}"
      && (h.isDefault options.bcm.monerod.dataDir -> h.under config.bcm.storage.bulk cfg.dataDir)
      && lib.elem cfg.dataDir unit.unitConfig.RequiresMountsFor
    ) "data-dir not rendered, not on the bulk tier or not guarded")
    (check "monerod: prune-blockchain=${if cfg.prune then "1" else "0"}, restricted RPC on ${toString cfg.restrictedRpc.port}, full RPC on loopback" (
      h.hasLine conf "prune-blockchain=${if cfg.prune then "1" else "0"}"
      && h.hasLine conf "rpc-restricted-bind-port=${toString cfg.restrictedRpc.port}"
      && h.hasLine conf "rpc-bind-ip=127.0.0.1"
    ) "prune or RPC lines differ")
    (check "monerod: ZMQ publisher ${cfg.zmq.pubEndpoint}" (h.hasLine conf "zmq-pub=${cfg.zmq.pubEndpoint}") "zmq-pub missing")
    # RandomX's JIT and MemoryDenyWriteExecute cannot both be on (the sandbox test shows the
    # "mprotect failed" that follows).
    (check "monerod: RandomX ${if cfg.randomxJit then "JIT with MemoryDenyWriteExecute lifted" else "interpreted under MemoryDenyWriteExecute"}" (
      if cfg.randomxJit then
        !unit.serviceConfig.MemoryDenyWriteExecute && !(unit.environment ? MONERO_RANDOMX_UMASK)
      else
        unit.serviceConfig.MemoryDenyWriteExecute && unit.environment.MONERO_RANDOMX_UMASK or null == "8"
    ) "JIT and MemoryDenyWriteExecute both on, or JIT needlessly off")
  ]
  ++ lib.optionals cfg.tor.proxy [
    (check "monerod: transactions and peers through Tor" (
      h.hasLine conf "tx-proxy=tor,${config.bcm.tor.socksEndpoint},16" && h.hasLine conf "proxy=${config.bcm.tor.socksEndpoint}"
    ) "tx-proxy/proxy missing")
  ]
  ++ lib.optionals config.bcm.tor.enable [
    (check "monerod: onion inbound and onion restricted RPC" (
      h.contains "monerod-start" "--anonymous-inbound="
      && h.contains "torrc" "HiddenServicePort ${toString cfg.restrictedRpc.port} 127.0.0.1:${toString cfg.restrictedRpc.port}"
    ) "anonymous-inbound or RPC onion missing")
  ]
  ++ lib.optionals cfg.tor.enforce [
    (check "monerod: Tor enforced, loopback only" (unit.serviceConfig.IPAddressAllow == loopback) "IPAddressAllow is not loopback")
  ]
)
