# Fulcrum, an Electrum server, indexing an unpruned bitcoind through its own whitelisted RPC user.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.bcm.fulcrum;
  bcmLib = import ./lib { inherit lib; };
  hardening = config.bcm.lib.hardening;
  bitcoind = config.bcm.bitcoind;
  torCfg = config.bcm.tor;
  rpcUser = bitcoind.rpc.users.fulcrum;

  settingsFormat = pkgs.formats.keyValue {
    mkKeyValue = lib.generators.mkKeyValueDefault { } " = ";
    listsAsDuplicateKeys = true;
  };
  # The bitcoind RPC password is appended at start (see preStart); the store file has none.
  configFile = settingsFormat.generate "fulcrum.conf" (bcmLib.withoutNulls cfg.settings);
  runtimeConfig = "/run/fulcrum/fulcrum.conf";

  dirsScript = bcmLib.mkDirsScript pkgs "fulcrum" [
    {
      path = cfg.dataDir;
      mode = "0750";
      inherit (cfg) user group;
    }
  ];

  preStart = pkgs.writeShellScript "fulcrum-prepare" ''
    set -euo pipefail
    umask 0077
    if [ ! -s ${cfg.tlsKey} ]; then
      # First start: a self-signed certificate; clients pin it (Electrum trusts on first use).
      # RSA: Fulcrum documents EC keys as experimental.
      ${pkgs.openssl}/bin/openssl req -x509 -newkey rsa:3072 -nodes \
        -keyout ${cfg.tlsKey}.tmp -out ${cfg.tlsCert} -days 3650 -subj /CN=bcm-fulcrum
      ${pkgs.coreutils}/bin/mv ${cfg.tlsKey}.tmp ${cfg.tlsKey}
      ${pkgs.coreutils}/bin/chmod 0644 ${cfg.tlsCert}
    fi
    { cat ${configFile}; printf 'rpcpassword = %s\n' "$(cat ${rpcUser.passwordFile})"; } > ${runtimeConfig}.tmp
    ${pkgs.coreutils}/bin/mv ${runtimeConfig}.tmp ${runtimeConfig}
  '';
in
{
  imports = [
    ./core.nix
    ./operator.nix
    ./tor.nix
    ./bitcoind.nix
  ];

  options.bcm.fulcrum = {
    enable = lib.mkEnableOption "Fulcrum, an Electrum server";

    package = lib.mkPackageOption pkgs "fulcrum" { };

    address = lib.mkOption {
      type = lib.types.str;
      default = "127.0.0.1";
      description = "Address for Electrum clients. Remote clients come through the onion service.";
    };

    port = lib.mkOption {
      type = lib.types.port;
      default = 50001;
      description = "Electrum TCP port.";
    };

    sslPort = lib.mkOption {
      type = lib.types.port;
      default = 50002;
      description = "Electrum TLS port.";
    };

    adminPort = lib.mkOption {
      type = lib.types.nullOr lib.types.port;
      default = null;
      example = 8000;
      description = ''
        Loopback port of Fulcrum's admin RPC, for the operator's `fulcrum-admin` wrapper. Off
        (null) by default: the admin RPC has no authentication, so every local user could stop
        the server or ban clients through it. Set a port only on hosts whose local users you trust.
      '';
    };

    dataDir = bcmLib.mkTierDirOption config "fast" "fulcrum" "Fulcrum's database and TLS key. Fast tier by default.";

    inherit (bcmLib.mkAccountOptions "fulcrum" "Fulcrum") user group;

    settings = lib.mkOption {
      default = { };
      description = "fulcrum.conf settings (RFC 42). The module sets connections, storage and TLS.";
      type = lib.types.submodule { freeformType = lib.types.attrsOf bcmLib.settingsAtom; };
    };

    tlsCert = lib.mkOption {
      type = lib.types.str;
      readOnly = true;
      default = "${cfg.dataDir}/tls.cert";
      description = "Fulcrum's self-signed certificate, created at first start.";
    };

    tlsKey = lib.mkOption {
      type = lib.types.str;
      readOnly = true;
      default = "${cfg.dataDir}/tls.key";
      description = "Fulcrum's TLS key, created at first start, mode 0600, owned by the fulcrum user.";
    };

    endpoints = lib.mkOption {
      type = lib.types.attrsOf lib.types.str;
      readOnly = true;
      default = {
        tcp = bcmLib.hostPort cfg.address cfg.port;
        ssl = bcmLib.hostPort cfg.address cfg.sslPort;
      };
      description = "Electrum endpoints (`tcp`, `ssl`).";
    };

    cli = lib.mkOption {
      type = lib.types.package;
      readOnly = true;
      default = pkgs.writeShellScriptBin "fulcrum-admin" ''
        exec ${cfg.package}/bin/FulcrumAdmin -H 127.0.0.1 -p ${toString cfg.adminPort} "$@"
      '';
      defaultText = lib.literalMD "a `FulcrumAdmin` wrapper for the admin port";
      description = "Admin CLI wrapper for the operator.";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.enable -> bitcoind.enable;
        message = "bcm.fulcrum needs bitcoind: set bcm.bitcoind.enable = true.";
      }
      {
        assertion = cfg.enable -> bitcoind.prune == 0;
        message = "bcm.fulcrum needs an unpruned bitcoind: set bcm.bitcoind.prune = 0 (it is ${toString bitcoind.prune}) or disable Fulcrum.";
      }
    ];

    # What Fulcrum needs from bitcoind: its own RPC user, limited to the calls Fulcrum 2.x makes
    # (BitcoinD.cpp, Controller, Servers.cpp).
    bcm.bitcoind.rpc.users.fulcrum = {
      owner = cfg.user;
      whitelist = [
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
        # Fulcrum's keep-alive: uptime, or "help help" where uptime is missing.
        "help"
        "sendrawtransaction"
        # blockchain.transaction.broadcast_package
        "submitpackage"
        "uptime"
        # The admin RPC's query_address (FulcrumAdmin query) lets bitcoind parse the address.
        "validateaddress"
      ];
    };

    bcm.fulcrum.settings = {
      datadir = cfg.dataDir;
      bitcoind = bitcoind.rpc.endpoint;
      rpcuser = rpcUser.name;
      tcp = cfg.endpoints.tcp;
      ssl = cfg.endpoints.ssl;
      cert = cfg.tlsCert;
      key = cfg.tlsKey;
      admin = if cfg.adminPort == null then null else bcmLib.hostPort "127.0.0.1" cfg.adminPort;
      # No peering with other Electrum servers: it would announce this host.
      peering = lib.mkDefault false;
      announce = lib.mkDefault false;
    };

    bcm.tor.onionServices.fulcrum = lib.mkIf torCfg.enable {
      map = [
        {
          port = cfg.port;
          target.port = cfg.port;
        }
        {
          port = cfg.sslPort;
          target.port = cfg.sslPort;
        }
      ];
    };

    bcm.operator.tools = lib.optional (cfg.adminPort != null) cfg.cli;

    systemd.services.fulcrum = {
      description = "Fulcrum Electrum server";
      wantedBy = [ "multi-user.target" ];
      requires = [
        "bitcoind.service"
        "bcm-secrets.service"
      ];
      after = [
        "bitcoind.service"
        "bcm-secrets.service"
      ];
      unitConfig.RequiresMountsFor = [
        cfg.dataDir
        config.bcm.lib.generatedSecretsDir
      ];
      restartTriggers = [ configFile ];
      serviceConfig =
        hardening.strict
        // (if bcmLib.isLoopback cfg.address then hardening.loopbackOnly else hardening.anyAddress)
        // hardening.allowProcInfo
        // {
          User = cfg.user;
          Group = cfg.group;
          RuntimeDirectory = "fulcrum";
          RuntimeDirectoryMode = "0700";
          ExecStartPre = [
            # "+": after the tier is mounted, as root (lib/default.nix, mkDirsScript).
            "+${dirsScript}"
            "${preStart}"
          ];
          ExecStart = "${cfg.package}/bin/Fulcrum ${runtimeConfig}";
          ReadWritePaths = [ cfg.dataDir ];
          Restart = "on-failure";
          # Fulcrum flushes its database on shutdown; killing it early forces a resync.
          TimeoutStopSec = "30min";
          LimitNOFILE = 65536;
        };
    };

    users.users.${cfg.user} = {
      isSystemUser = true;
      group = cfg.group;
      home = cfg.dataDir;
      description = "Fulcrum Electrum server";
    };
    users.groups.${cfg.group} = { };
  };
}
