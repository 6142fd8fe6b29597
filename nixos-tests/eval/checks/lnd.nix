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
  # Every bitcoind RPC LND v0.20.1 makes with a bitcoind backend, read from its source and its
  # dependencies' (chainreg, lnwallet/chainfee; btcwallet v0.16.17 chain/bitcoind_*.go,
  # mempool.go, pruned_block_dispatcher.go; btcd rpcclient BackendVersion, which calls getinfo).
  # A call missing from the whitelist gets HTTP 403 and LND fails at start or later.
  required = [
    "estimatesmartfee"
    "getblock"
    "getblockchaininfo"
    "getblockhash"
    "getblockheader"
    "getdeploymentinfo"
    "getinfo"
    "getmempoolinfo"
    "getnetworkinfo"
    "getnodeaddresses"
    "getpeerinfo"
    "getrawmempool"
    "getrawtransaction"
    "gettxout"
    "gettxspendingprevout"
    "getzmqnotifications"
    "sendrawtransaction"
    "testmempoolaccept"
    "uptime"
  ];
  whitelisted = h.whitelistOf "lnd";
  onion = config.bcm.tor.onionServices.lnd or null;
in
lib.optionals cfg.enable (
  [
    (check "lnd: data on ${cfg.dataDir}${lib.optionalString (h.isDefault options.bcm.lnd.dataDir) " (fast tier)"}" (
      h.hasLine conf "datadir=${cfg.dataDir}/data"
      && h.hasLine conf "tlscertpath=${cfg.tlsCert}"
      # lnddir would send the certificate, key and logs back to its defaults.
      && !h.contains "lnd.conf" "lnddir="
      && (h.isDefault options.bcm.lnd.dataDir -> h.under config.bcm.storage.fast cfg.dataDir)
      && lib.elem cfg.dataDir unit.unitConfig.RequiresMountsFor
    ) "datadir/tlscertpath not rendered (or lnddir set), not on the fast tier or not guarded")
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
    (check "lnd: its whitelist covers every RPC LND's bitcoind backend makes" (
      lib.subtractLists whitelisted required == [ ]
    ) "missing from rpcwhitelist=lnd: ${lib.concatStringsSep ", " (lib.subtractLists whitelisted required)}")
    (check "lnd: wallet created by lndinit before LND listens, unlocked from a file, no allow-create window" (
      let
        pre = lib.toList unit.serviceConfig.ExecStartPre;
        initIndex = lib.lists.findFirstIndex (lib.hasSuffix "-lnd-init-wallet") null pre;
      in
      h.hasLine conf "wallet-unlock-password-file=${cfg.walletPasswordFile}"
      && !(h.contains conf "wallet-unlock-allow-create")
      && initIndex != null
      # Not "+": the wallet and seed are made as the lnd user, under the unit's sandbox.
      && !(lib.hasPrefix "+" (lib.elemAt pre initIndex))
      && h.contains "lnd-init-wallet" "init-wallet"
      && h.contains "lnd-init-wallet" "--init-file.output-wallet-dir=${cfg.networkDir}"
      && !(h.contains "lnd-post-start" "initwallet")
      && config.bcm.lib.generatedSecrets.lnd-wallet-password.owner == cfg.user
    ) "the wallet is not made by lndinit before start, or LND still waits for a wallet to be created over its API")
    (check "lnd: TLS certificate without interface autofill (netlink is refused)" (
      h.hasLine conf "tlsdisableautofill=true"
      || lib.elem "AF_NETLINK" (lib.toList unit.serviceConfig.RestrictAddressFamilies)
    ) "LND lists the interfaces for its certificate but may not use netlink")
    (check "lnd: macaroons baked per consumer (${lib.concatStringsSep ", " (lib.attrNames cfg.macaroons)})" (
      lib.all (
        name: h.contains "lnd-post-start" "bakemacaroon --save_to=/run/lnd/${name}.macaroon" && h.contains "lnd-post-start" cfg.macaroons.${name}.path
      ) (lib.attrNames cfg.macaroons)
      && !(lib.elem "macaroon:generate" cfg.macaroons.operator.permissions)
    ) "a macaroon is not baked or the operator may mint macaroons")
  ]
  ++ lib.optionals cfg.snapshots.enable (
    let
      pre = lib.toList unit.serviceConfig.ExecStartPre;
      index = suffix: lib.lists.findFirstIndex (lib.hasInfix suffix) null pre;
      snapshotIndex = index "lnd prepare-start";
      walletIndex = index "-lnd-init-wallet";
      post = lib.toList unit.serviceConfig.ExecStartPost;
      stop = lib.toList (unit.serviceConfig.ExecStop or [ ]);
      # Only the tiers the host defines: reading an undefined one (a host without a bulk disk) fails.
      definedTiers = map (tier: config.bcm.storage.${tier}) (
        lib.filter (tier: options.bcm.storage.${tier}.isDefined) [
          "fast"
          "bulk"
        ]
      );
      dataTier = lib.findFirst (tier: h.under tier cfg.dataDir) null definedTiers;
    in
    [
      (check "lnd: data snapshotted before any other step touches it, as the lnd user" (
        snapshotIndex != null
        && walletIndex != null
        && snapshotIndex < walletIndex
        && !(lib.hasPrefix "+" (lib.elemAt pre snapshotIndex))
        && lib.hasInfix "--data-dir=${cfg.dataDir}" (lib.elemAt pre snapshotIndex)
        && lib.hasInfix "--lnd=${cfg.package}/bin/lnd" (lib.elemAt pre snapshotIndex)
      ) "the prepare-start step is missing, runs as root, or comes after lnd-init-wallet")
      (check "lnd: an older LND is refused by the main process, which systemd does not restart (exit 78)" (
        h.contains "lnd-start" "exit 78"
        && h.contains "lnd-start" "exec ${cfg.package}/bin/lnd --configfile="
        && lib.hasSuffix "-lnd-start" unit.serviceConfig.ExecStart
        && unit.serviceConfig.RestartPreventExitStatus == "78"
        && lib.hasInfix "--refusal-file=/run/lnd/refused" (lib.elemAt pre snapshotIndex)
      ) "the refusal does not fail the main process with a status RestartPreventExitStatus lists")
      (check "lnd: snapshots at ${cfg.snapshots.dir}, on the data's tier, writable and waited for" (
        dataTier != null
        && h.under dataTier cfg.snapshots.dir
        && lib.elem cfg.snapshots.dir (lib.toList unit.serviceConfig.ReadWritePaths)
        && lib.elem cfg.snapshots.dir unit.unitConfig.RequiresMountsFor
        && h.contains "lnd-dirs" cfg.snapshots.dir
      ) "the snapshots directory is not on the data's tier, not writable by the unit or not mounted first")
      (check "lnd: channel state recorded after start (as the lnd user) and before stop (final)" (
        lib.any (l: lib.hasPrefix "-" l && lib.hasInfix "lnd record-state" l && !(lib.hasInfix "--final" l)) post
        && lib.any (l: lib.hasPrefix "-" l && lib.hasInfix "lnd record-state" l && lib.hasInfix "--final" l) stop
      ) "record-state is not run after start and in ExecStop")
      (check "lnd: bcm-tools installed for root's rollback" (
        lib.any (p: (p.pname or "") == "bcm-tools" || lib.hasSuffix "-bcm-tools" (toString p)) config.environment.systemPackages
      ) "bcm-tools is not in environment.systemPackages")
    ]
  )
  ++ lib.optionals cfg.tor.proxy [
    (check "lnd: peers through Tor (tor.socks=${config.bcm.tor.socksEndpoint})" (
      h.hasLine conf "tor.active=true" && h.hasLine conf "tor.socks=${config.bcm.tor.socksEndpoint}"
    ) "tor section missing")
  ]
  ++ lib.optionals (config.bcm.tor.enable && onion != null && onion.enable) [
    (check "lnd: onion address announced as externalip" (
      h.contains "lnd-prepare" "externalip=$(cat \"$CREDENTIALS_DIRECTORY/onion-address\"):${toString cfg.port}"
    ) "externalip line for the onion address missing")
  ]
  ++ lib.optionals cfg.tor.enforce [
    (check "lnd: Tor enforced, loopback only" (unit.serviceConfig.IPAddressAllow == loopback) "IPAddressAllow is not loopback")
  ]
)
