# bitcoind on hybrid storage: block files on the bulk tier, chainstate, indexes and wallets on
# the fast tier. Each RPC client gets its own rpcauth user limited by rpcwhitelist.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.bcm.bitcoind;
  bcmLib = import ./lib { inherit lib; };
  hardening = config.bcm.lib.hardening;
  network = config.bcm.network;
  torCfg = config.bcm.tor;
  secretsDir = config.bcm.lib.generatedSecretsDir;
  onion = torCfg.onionServices.bitcoind or null;
  announceOnion = torCfg.enable && onion != null && onion.enable;

  defaultPorts = {
    mainnet = {
      p2p = 8333;
      rpc = 8332;
    };
    testnet4 = {
      p2p = 48333;
      rpc = 48332;
    };
    signet = {
      p2p = 38333;
      rpc = 38332;
    };
    regtest = {
      p2p = 18444;
      rpc = 18443;
    };
  };
  chain = bcmLib.bitcoinChain.${network};

  settingsFormat = pkgs.formats.iniWithGlobalSection { listsAsDuplicateKeys = true; };
  rpcauthFile = "${secretsDir}/bitcoind-rpcauth.conf";
  cliConfigRuntime = cfg.rpc.users.cli.passwordFile + ".conf";

  # Network-specific options (ports, binds, rpcauth whitelists) only take effect inside the
  # section of the active chain, so everything but `chain` and `includeconf` goes there.
  configFile = settingsFormat.generate "bitcoin.conf" {
    globalSection = {
      inherit chain;
      # rpcauth lines are derived from each client's password at start; never in the store.
      includeconf = rpcauthFile;
    };
    sections.${chain} = bcmLib.numericBools (bcmLib.withoutNulls cfg.settings);
  };

  # bitcoin-cli for the operator: connection settings from the store, completed on the host with
  # the credentials into a file only the operator group can read (cliConfigRuntime).
  # bitcoin-cli has no -includeconf (only bitcoind registers it), so the file must be whole.
  cliConfigFile = settingsFormat.generate "bitcoin-cli.conf" {
    globalSection = {
      inherit chain;
    };
    sections.${chain} = {
      rpcconnect = cfg.rpc.address;
      rpcport = cfg.rpc.port;
    };
  };

  dirsScript = bcmLib.mkDirsScript pkgs "bitcoind" [
    {
      path = cfg.dataDir;
      mode = "0750";
      inherit (cfg) user group;
    }
    {
      path = cfg.blocksDir;
      mode = "0750";
      inherit (cfg) user group;
    }
  ];

  startScript = pkgs.writeShellScript "bitcoind-start" ''
    set -euo pipefail
    args=()
    ${lib.optionalString announceOnion ''
      # Announce the onion address Tor created for us; it is only known at runtime.
      args+=("-externalip=$(cat "$CREDENTIALS_DIRECTORY/onion-address")")
    ''}
    exec ${cfg.package}/bin/bitcoind -conf=${configFile} -datadir=${cfg.dataDir} "''${args[@]}"
  '';

  rpcUserType = lib.types.submodule (
    { name, ... }:
    {
      options = {
        name = lib.mkOption {
          type = lib.types.strMatching "[A-Za-z0-9_-]+";
          default = name;
          description = "RPC user name.";
        };
        owner = lib.mkOption {
          type = lib.types.str;
          description = "Unix user that reads the password file (the client's service user).";
        };
        group = lib.mkOption {
          type = lib.types.str;
          default = "root";
          description = "Group that may also read the password file (mode 0640 when not root).";
        };
        whitelist = lib.mkOption {
          type = lib.types.nullOr (lib.types.listOf lib.types.str);
          default = null;
          example = [
            "getblockchaininfo"
            "getblock"
          ];
          description = "RPC calls this user may make (`rpcwhitelist`); `null` allows all.";
        };
        passwordFile = lib.mkOption {
          type = lib.types.str;
          default = "${secretsDir}/bitcoind-rpc-${name}-password";
          description = "File holding the password, generated at first start when missing.";
        };
      };
    }
  );
in
{
  imports = [
    ./core.nix
    ./operator.nix
    ./tor.nix
  ];

  options.bcm.bitcoind = {
    enable = lib.mkEnableOption "bitcoind, the Bitcoin Core daemon";

    package = lib.mkPackageOption pkgs "bitcoind" { };

    address = lib.mkOption {
      type = lib.types.str;
      default = "127.0.0.1";
      description = "Address for inbound peer connections. With Tor, peers arrive through the onion service.";
    };

    port = lib.mkOption {
      type = lib.types.port;
      default = defaultPorts.${network}.p2p;
      defaultText = lib.literalMD "the network's P2P port (8333, 48333, 38333, 18444)";
      description = "P2P port.";
    };

    onionPort = lib.mkOption {
      type = lib.types.port;
      default = cfg.port + 1;
      defaultText = lib.literalExpression "config.bcm.bitcoind.port + 1";
      description = "Loopback port bound with `=onion`, where the onion service delivers inbound peers.";
    };

    rpc = {
      address = lib.mkOption {
        type = lib.types.str;
        default = "127.0.0.1";
        description = "RPC listen address.";
      };
      port = lib.mkOption {
        type = lib.types.port;
        default = defaultPorts.${network}.rpc;
        defaultText = lib.literalMD "the network's RPC port (8332, 48332, 38332, 18443)";
        description = "RPC port.";
      };
      endpoint = lib.mkOption {
        type = lib.types.str;
        readOnly = true;
        default = bcmLib.hostPort cfg.rpc.address cfg.rpc.port;
        description = "`address:port` of the RPC server, for clients.";
      };
      users = lib.mkOption {
        type = lib.types.attrsOf rpcUserType;
        default = { };
        description = ''
          RPC users, one per client. Each gets a generated password readable only by its
          `owner` and an `rpcauth` line for bitcoind; `whitelist` limits its calls.
        '';
      };
    };

    zmq = {
      address = lib.mkOption {
        type = lib.types.str;
        default = "127.0.0.1";
        description = "Address the ZMQ publishers bind to.";
      };
      rawblockPort = lib.mkOption {
        type = lib.types.port;
        default = 28332;
        description = "Port of `zmqpubrawblock`.";
      };
      rawtxPort = lib.mkOption {
        type = lib.types.port;
        default = 28333;
        description = "Port of `zmqpubrawtx`.";
      };
      hashblockPort = lib.mkOption {
        type = lib.types.port;
        default = 28334;
        description = "Port of `zmqpubhashblock`.";
      };
      sequencePort = lib.mkOption {
        type = lib.types.port;
        default = 28336;
        description = "Port of `zmqpubsequence`.";
      };
      endpoints = lib.mkOption {
        type = lib.types.attrsOf lib.types.str;
        readOnly = true;
        default = lib.mapAttrs (_: port: "tcp://${bcmLib.hostPort cfg.zmq.address port}") {
          rawblock = cfg.zmq.rawblockPort;
          rawtx = cfg.zmq.rawtxPort;
          hashblock = cfg.zmq.hashblockPort;
          sequence = cfg.zmq.sequencePort;
        };
        description = "ZMQ endpoints by topic (`rawblock`, `rawtx`, `hashblock`, `sequence`), for LND and event consumers.";
      };
    };

    prune = lib.mkOption {
      type = lib.types.ints.unsigned;
      default = 0;
      description = "Prune target in MiB; 0 keeps every block (required by Fulcrum). At least 550 otherwise.";
    };

    txindex = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = "Whether to keep a full transaction index (on the fast tier).";
    };

    dbcache = lib.mkOption {
      type = lib.types.ints.between 4 16384;
      default = 450;
      description = "UTXO cache in MiB, from the host spec.";
    };

    dataDir = bcmLib.mkTierDirOption config "fast" "bitcoind" "`datadir`: chainstate, indexes and wallets. Fast tier by default.";

    blocksDir = bcmLib.mkTierDirOption config "bulk" "bitcoind/blocks" "`blocksdir`: block and undo files. Bulk tier by default.";

    inherit (bcmLib.mkAccountOptions "bitcoind" "bitcoind") user group;

    tor = bcmLib.mkTorOptions "bitcoind";

    settings = lib.mkOption {
      default = { };
      description = ''
        bitcoin.conf settings (RFC 42) for the active chain's section. The module fills in
        storage, ports, ZMQ, RPC whitelists and Tor; add anything else here.
      '';
      type = lib.types.submodule { freeformType = lib.types.attrsOf bcmLib.settingsAtom; };
    };

    configFile = lib.mkOption {
      type = lib.types.str;
      readOnly = true;
      default = "${configFile}";
      description = "The rendered bitcoin.conf (no secrets; rpcauth is included from the host).";
    };

    cli = lib.mkOption {
      type = lib.types.package;
      readOnly = true;
      default = pkgs.writeShellScriptBin "bitcoin-cli" ''
        exec ${cfg.package}/bin/bitcoin-cli -conf=${cliConfigRuntime} -datadir=/var/empty "$@"
      '';
      defaultText = lib.literalMD "a `bitcoin-cli` wrapper using the operator's RPC credentials";
      description = "`bitcoin-cli` wrapper for the operator.";
    };
  };

  config = lib.mkMerge [
    {
      # The operator's bitcoin-cli user, unrestricted. Always defined, so the read-only `cli`
      # evaluates even while bitcoind is off.
      bcm.bitcoind.rpc.users.cli = {
        owner = "root";
        group = config.bcm.lib.operatorGroup;
      };
    }
    (lib.mkIf cfg.enable {
      assertions = [
        {
          assertion = cfg.prune == 0 || cfg.prune >= 550;
          message = "bcm.bitcoind.prune is ${toString cfg.prune}; bitcoind needs 0 (no pruning) or at least 550 MiB.";
        }
        {
          assertion = cfg.txindex -> cfg.prune == 0;
          message = "bcm.bitcoind.txindex needs an unpruned node: set bcm.bitcoind.prune = 0 or txindex = false.";
        }
        {
          assertion = cfg.tor.enforce -> cfg.tor.proxy;
          message = "bcm.bitcoind.tor.enforce cuts bitcoind off from everything but loopback; enable bcm.bitcoind.tor.proxy (bcm.tor.enable) or set tor.enforce = false.";
        }
        {
          assertion = cfg.tor.proxy -> torCfg.enable;
          message = "bcm.bitcoind.tor.proxy needs Tor: set bcm.tor.enable = true.";
        }
        {
          assertion = cfg.dataDir != cfg.blocksDir;
          message = "bcm.bitcoind.dataDir and blocksDir must differ (blocks go to bulk storage, chainstate to fast).";
        }
      ];

      bcm.bitcoind.tor = {
        proxy = lib.mkDefault torCfg.enable;
        enforce = lib.mkDefault torCfg.enforce;
      };

      bcm.bitcoind.settings = lib.mkMerge [
        {
          server = true;
          blocksdir = cfg.blocksDir;
          dbcache = cfg.dbcache;
          prune = cfg.prune;
          txindex = cfg.txindex;
          listen = true;
          bind = [ "${bcmLib.hostPort cfg.address cfg.port}" ] ++ lib.optional announceOnion "${bcmLib.hostPort "127.0.0.1" cfg.onionPort}=onion";
          port = cfg.port;
          rpcbind = cfg.rpc.address;
          rpcport = cfg.rpc.port;
          rpcallowip = lib.mkDefault "127.0.0.1";
          # Users without an explicit whitelist (the operator's cli user) keep full access.
          rpcwhitelistdefault = false;
          rpcwhitelist = lib.mapAttrsToList (_: user: "${user.name}:${lib.concatStringsSep "," user.whitelist}") (
            lib.filterAttrs (_: user: user.whitelist != null) cfg.rpc.users
          );
          zmqpubrawblock = cfg.zmq.endpoints.rawblock;
          zmqpubrawtx = cfg.zmq.endpoints.rawtx;
          zmqpubhashblock = cfg.zmq.endpoints.hashblock;
          zmqpubsequence = cfg.zmq.endpoints.sequence;
          # Type=notify without libsystemd (nixpkgs' bitcoind does not link it): bitcoind runs
          # systemd-notify itself once it is ready and when it begins to stop, as upstream's
          # contrib/init/bitcoind.service does.
          startupnotify = "${pkgs.systemd}/bin/systemd-notify --ready";
          shutdownnotify = "${pkgs.systemd}/bin/systemd-notify --stopping";
        }
        (lib.mkIf cfg.tor.proxy {
          proxy = torCfg.socksEndpoint;
          # The onion service is managed by bcm.tor; bitcoind must not create its own.
          listenonion = false;
        })
        (lib.mkIf (network == "regtest") {
          fallbackfee = lib.mkDefault "0.0002";
        })
      ];

      bcm.tor.onionServices.bitcoind = lib.mkIf torCfg.enable {
        map = [
          {
            port = cfg.port;
            target.port = cfg.onionPort;
          }
        ];
      };

      bcm.lib.generatedSecrets = lib.mkMerge (
        lib.mapAttrsToList (userName: user: {
          "bitcoind-rpc-${userName}-password" = {
            file = user.passwordFile;
            owner = user.owner;
            group = user.group;
            mode = if user.group == "root" then "0600" else "0640";
            script = "openssl rand -hex 32 | tr -d '\\n'";
          };
        }) cfg.rpc.users
        ++ [
          {
            # rpcauth lines (salted HMACs of each client's password) for bitcoind's includeconf.
            bitcoind-rpcauth = {
              file = rpcauthFile;
              owner = cfg.user;
              group = cfg.group;
              derived = true;
              script = lib.concatMapStrings (user: ''
                salt=$(openssl rand -hex 16)
                hmac=$(openssl dgst -sha256 -hmac "$salt" -r < ${lib.escapeShellArg user.passwordFile} | cut -d' ' -f1)
                echo "rpcauth=${user.name}:$salt\$$hmac"
              '') (lib.attrValues cfg.rpc.users);
            };
            # Credentials for the operator's bitcoin-cli, included by its store config.
            bitcoind-cli-credentials = {
              file = cliConfigRuntime;
              owner = "root";
              group = config.bcm.lib.operatorGroup;
              mode = "0640";
              derived = true;
              # The store file ends in the chain's section, where these lines then belong.
              script = ''
                cat ${cliConfigFile}
                echo "rpcuser=${cfg.rpc.users.cli.name}"
                echo "rpcpassword=$(cat ${lib.escapeShellArg cfg.rpc.users.cli.passwordFile})"
              '';
            };
          }
        ]
      );

      bcm.operator.tools = [ cfg.cli ];

      systemd.services.bitcoind = {
        description = "Bitcoin daemon (${network})";
        wantedBy = [ "multi-user.target" ];
        requires = [ "bcm-secrets.service" ] ++ lib.optional announceOnion "tor.service";
        after = [
          "network-online.target"
          "bcm-secrets.service"
        ]
        ++ lib.optional torCfg.enable "tor.service";
        wants = [ "network-online.target" ];
        # A missing disk must stop bitcoind instead of letting it refill the root filesystem.
        unitConfig.RequiresMountsFor = [
          cfg.dataDir
          cfg.blocksDir
          secretsDir
        ];
        restartTriggers = [ configFile ];
        serviceConfig =
          hardening.strict
          // bcmLib.peerNetworkAccess cfg.tor
          # The ZMQ publishers are always on (LND and the event stream subscribe).
          // hardening.allowNetlink
          // {
            Type = "notify";
            # The notification comes from the systemd-notify child bitcoind spawns.
            NotifyAccess = "all";
            User = cfg.user;
            Group = cfg.group;
            # "+": after the tiers are mounted, as root (lib/default.nix, mkDirsScript).
            ExecStartPre = "+${dirsScript}";
            ExecStart = "${startScript}";
            LoadCredential = lib.optional announceOnion "onion-address:${onion.hostnameFile}";
            ReadWritePaths = [
              cfg.dataDir
              cfg.blocksDir
            ];
            Restart = "on-failure";
            # Flushing a large dbcache to disk on shutdown takes a while.
            TimeoutStopSec = "10min";
            # Readiness comes only after the block index is loaded and verified, which after an
            # unclean stop (or a reindex) on the bulk tier can take hours; upstream's unit waits
            # forever too, instead of killing and restarting it in a loop.
            TimeoutStartSec = "infinity";
            LimitNOFILE = 8192;
          };
      };

      users.users.${cfg.user} = {
        isSystemUser = true;
        group = cfg.group;
        home = cfg.dataDir;
        description = "Bitcoin daemon";
      };
      users.groups.${cfg.group} = { };
    })
  ];
}
