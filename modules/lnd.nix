# LND on bitcoind: its own whitelisted RPC user, bitcoind's ZMQ, a wallet created and unlocked
# without interaction, and macaroons baked for the services that read it.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.bcm.lnd;
  bcmLib = import ./lib { inherit lib; };
  hardening = config.bcm.lib.hardening;
  bitcoind = config.bcm.bitcoind;
  torCfg = config.bcm.tor;
  secretsDir = config.bcm.lib.generatedSecretsDir;
  rpcUser = bitcoind.rpc.users.lnd;
  onion = torCfg.onionServices.lnd or null;
  announceOnion = torCfg.enable && onion != null && onion.enable;

  lndNetwork = config.bcm.network;

  settingsFormat = pkgs.formats.ini { listsAsDuplicateKeys = true; };
  # bitcoind's RPC password (and the onion address) are appended at start; see prepareConfig.
  # LND's config parser (go-flags) merges a repeated section header into the earlier section.
  configFile = settingsFormat.generate "lnd.conf" (lib.mapAttrs (_: bcmLib.withoutNulls) cfg.settings);
  runtimeConfig = "/run/lnd/lnd.conf";

  prepareConfig = pkgs.writeShellScript "lnd-prepare" ''
    set -euo pipefail
    umask 0077
    {
      cat ${configFile}
      echo
      echo "[Bitcoind]"
      printf 'bitcoind.rpcpass=%s\n' "$(cat ${rpcUser.passwordFile})"
      ${lib.optionalString announceOnion ''
        echo "[Application Options]"
        # A fixed address: externalip, not externalhosts (a name LND re-resolves periodically).
        echo "externalip=$(cat "$CREDENTIALS_DIRECTORY/onion-address"):${toString cfg.port}"
      ''}
    } > ${runtimeConfig}.tmp
    ${pkgs.coreutils}/bin/mv ${runtimeConfig}.tmp ${runtimeConfig}
  '';

  dirsScript = bcmLib.mkDirsScript pkgs "lnd" (
    [
      {
        path = cfg.dataDir;
        mode = "0750";
        inherit (cfg) user group;
      }
      {
        path = cfg.certDir;
        mode = "0755";
        inherit (cfg) user group;
      }
    ]
    ++ lib.optional snapshots.enable {
      path = snapshots.dir;
      mode = "0700";
      inherit (cfg) user group;
    }
  );

  # Snapshots tied to the LND version (bcm_tools/lnd_rollback.py says how and why).
  snapshots = cfg.snapshots;
  # Built only when enabled, so hosts without snapshots never evaluate it.
  toolsPackage = if snapshots.package != null then snapshots.package else pkgs.callPackage ../pkgs/bcm-tools { lnd = cfg.package; };
  bcmTools = lib.getExe toolsPackage;
  snapshotLayout = [
    "--data-dir=${cfg.dataDir}"
    "--snapshots-dir=${snapshots.dir}"
  ];
  refusalFile = "/run/lnd/refused";
  # EX_CONFIG; bcm_tools.lnd_rollback.EXIT_REFUSED.
  exitRefused = 78;
  prepareStart = "${bcmTools} ${
    lib.escapeShellArgs (
      [
        "lnd"
        "prepare-start"
      ]
      ++ snapshotLayout
      ++ [
        "--lnd=${cfg.package}/bin/lnd"
        "--keep=${toString snapshots.keep}"
        "--reserve-mb=${toString snapshots.reserveMB}"
        "--refusal-file=${refusalFile}"
      ]
    )
  }";
  # As the lnd user, with LND's admin macaroon: that user owns it already, and a narrower one
  # could only be baked by the root post-start step for the same user.
  recordState =
    final:
    "${bcmTools} ${
      lib.escapeShellArgs (
        [
          "lnd"
          "record-state"
        ]
        ++ snapshotLayout
        ++ [
          "--lnd-rpc=${cfg.rpc.endpoint}"
          "--lnd-tls-cert=${cfg.tlsCert}"
          "--lnd-macaroon=${cfg.adminMacaroon}"
        ]
        ++ lib.optional final "--final"
      )
    }";

  # The pre-start step only writes its refusal: systemd's RestartPreventExitStatus looks at the
  # main process alone, so the main process fails with it and the unit stays down instead of
  # restarting into the same refusal every RestartSec.
  startLnd = pkgs.writeShellScript "lnd-start" ''
    if [ -s ${refusalFile} ]; then
      printf '%s\n' "$(< ${refusalFile})" >&2
      exit ${toString exitRefused}
    fi
    exec ${cfg.package}/bin/lnd --configfile=${runtimeConfig}
  '';

  # lndinit's --network knows mainnet, testnet(3), regtest and simnet. For a wallet file the
  # network only sets the HD key version and coin type, which all test networks share, and the
  # genesis block the wallet starts from, which btcwallet replaces at first sync by the birthday
  # block it finds on the real chain; so signet and testnet4 get a testnet wallet.
  initNetwork =
    {
      mainnet = "mainnet";
      regtest = "regtest";
      signet = "testnet";
      testnet4 = "testnet";
    }
    .${lndNetwork};

  # Runs as the lnd user before LND starts, so the wallet exists before LND listens: LND's
  # WalletUnlocker API is unauthenticated, and any local user who reached it first could plant
  # a seed of their own.
  initWallet = pkgs.writeShellScript "lnd-init-wallet" ''
    set -euo pipefail
    umask 0077
    PATH=${lib.makeBinPath [ pkgs.coreutils ]}
    # An existing wallet is LND's alone; a wrong password stops LND itself ("error unlocking
    # wallet with password from file"). lndinit's own check would need the seed file, which may
    # have gone offline after its backup, and opens the wallet with lndinit's btcwallet, which
    # upgrades the wallet's schema, or refuses one LND already upgraded.
    if [ -e ${cfg.networkDir}/wallet.db ]; then
      exit 0
    fi
    lndinit=${lib.getExe cfg.initPackage}
    # A seed left by an attempt that stopped before the wallet was written is used again, so the
    # mnemonic on disk always belongs to the wallet.
    if [ ! -s ${cfg.seedMnemonicFile} ]; then
      "$lndinit" gen-seed > ${cfg.seedMnemonicFile}.tmp
      mv ${cfg.seedMnemonicFile}.tmp ${cfg.seedMnemonicFile}
    fi
    # Made beside its place and moved in whole: LND takes any wallet.db for a wallet, so one cut
    # short would never be made again.
    rm -rf ${cfg.networkDir}/wallet-init
    "$lndinit" init-wallet \
      --network=${initNetwork} \
      --secret-source=file \
      --file.seed=${cfg.seedMnemonicFile} \
      --file.wallet-password=${cfg.walletPasswordFile} \
      --init-type=file \
      --init-file.output-wallet-dir=${cfg.networkDir}/wallet-init
    mv ${cfg.networkDir}/wallet-init/wallet.db ${cfg.networkDir}/wallet.db
    rmdir ${cfg.networkDir}/wallet-init
  '';

  lncliAdmin = "${cfg.package}/bin/lncli --network=${lndNetwork} --rpcserver=${cfg.rpc.endpoint} --tlscertpath=${cfg.tlsCert} --macaroonpath=${cfg.adminMacaroon}";

  # Runs as root ("+") after LND started: bakes the macaroons other units asked for and hands
  # each to its user.
  postStart = pkgs.writeShellScript "lnd-post-start" ''
    set -euo pipefail
    umask 0077
    PATH=${lib.makeBinPath [ pkgs.coreutils ]}
    ${bcmLib.waitForPort "127.0.0.1" cfg.restPort 300}
    # LND writes its certificate under UMask=0077; clients of other users need to read it.
    chmod 0644 ${cfg.tlsCert}

    # LND unlocks the wallet lnd-init-wallet made with wallet-unlock-password-file; wait until
    # the RPC server is up and LND has written its admin macaroon.
    for _ in $(seq 1 300); do
      if [ -e ${cfg.adminMacaroon} ] && ${lncliAdmin} getinfo >/dev/null 2>&1; then break; fi
      sleep 1
    done
    ${lncliAdmin} getinfo >/dev/null

    ${lib.concatStrings (
      lib.mapAttrsToList (name: macaroon: ''
        ${lncliAdmin} bakemacaroon --save_to=/run/lnd/${name}.macaroon ${lib.escapeShellArgs macaroon.permissions}
        install -D -m ${macaroon.mode} -o ${macaroon.user} -g ${macaroon.group} /run/lnd/${name}.macaroon ${macaroon.path}
        rm -f /run/lnd/${name}.macaroon
      '') cfg.macaroons
    )}
  '';

  macaroonType = lib.types.submodule (
    { name, config, ... }:
    {
      options = {
        user = lib.mkOption {
          type = lib.types.str;
          description = "User that reads the macaroon.";
        };
        group = lib.mkOption {
          type = lib.types.str;
          default = "root";
          description = "Group that may also read it (mode 0640 when not root).";
        };
        permissions = lib.mkOption {
          type = lib.types.nonEmptyListOf (lib.types.strMatching "[a-z]+:[a-z]+|uri:/.+");
          example = [
            "info:read"
            "offchain:read"
          ];
          description = "`entity:action` permissions (or `uri:/...`) passed to `lncli bakemacaroon`.";
        };
        mode = lib.mkOption {
          type = lib.types.str;
          readOnly = true;
          default = if config.group == "root" then "0600" else "0640";
          description = "File mode of the baked macaroon.";
        };
        path = lib.mkOption {
          type = lib.types.str;
          readOnly = true;
          default = "${secretsDir}/lnd-macaroons/${name}.macaroon";
          description = "Where the baked macaroon is written at every LND start.";
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
    ./bitcoind.nix
  ];

  options.bcm.lnd = {
    enable = lib.mkEnableOption "LND, the Lightning Network daemon";

    package = lib.mkPackageOption pkgs "lnd" { };

    initPackage = lib.mkPackageOption pkgs "lndinit" { };

    snapshots = {
      enable = lib.mkOption {
        type = lib.types.bool;
        default = true;
        description = ''
          Whether LND's data is tied to the LND version that ran on it: before another version
          starts, the data directory is copied to a snapshot (reflink where the file system can,
          after checking for room otherwise); an older version than the one that last ran is not
          started, and the unit fails with the snapshot to restore and the command that does it
          (`bcm-tools lnd rollback`), which refuses when LND's records show the channels may have
          moved since.
        '';
      };
      dir = lib.mkOption {
        type = lib.types.str;
        default = "${cfg.dataDir}-snapshots";
        defaultText = lib.literalExpression ''"''${config.bcm.lnd.dataDir}-snapshots"'';
        description = "Where snapshots are kept; on the data directory's file system, so a restore is one rename.";
      };
      keep = lib.mkOption {
        type = lib.types.ints.positive;
        default = 3;
        description = "How many snapshots are kept (the oldest go first).";
      };
      package = lib.mkOption {
        type = lib.types.nullOr lib.types.package;
        default = null;
        description = ''
          The bcm-tools package that snapshots, records the channel state and rolls back
          (`bcm-tools lnd`); `null` builds this repository's, with LND's gRPC stubs generated from
          the source of `bcm.lnd.package`.
        '';
      };
      reserveMB = lib.mkOption {
        type = lib.types.ints.unsigned;
        default = 1024;
        description = "Space, in MB, that must stay free on the tier after a plain copy; LND does not start otherwise.";
      };
    };

    alias = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      description = "Node alias announced to the network.";
    };

    address = lib.mkOption {
      type = lib.types.str;
      default = "127.0.0.1";
      description = "Address for inbound peer connections. With Tor, peers arrive through the onion service.";
    };

    port = lib.mkOption {
      type = lib.types.port;
      default = 9735;
      description = "P2P port.";
    };

    rpc = {
      address = lib.mkOption {
        type = lib.types.str;
        default = "127.0.0.1";
        description = "gRPC listen address.";
      };
      port = lib.mkOption {
        type = lib.types.port;
        default = 10009;
        description = "gRPC port.";
      };
      endpoint = lib.mkOption {
        type = lib.types.str;
        readOnly = true;
        default = bcmLib.hostPort cfg.rpc.address cfg.rpc.port;
        description = "`address:port` of the gRPC server, for clients (backups, events).";
      };
    };

    restAddress = lib.mkOption {
      type = lib.types.str;
      default = "127.0.0.1";
      description = "REST listen address.";
    };

    restPort = lib.mkOption {
      type = lib.types.port;
      default = 8080;
      description = "REST port.";
    };

    dataDir = bcmLib.mkTierDirOption config "fast" "lnd" "LND's wallet, channel database, logs and TLS key. Fast tier by default.";

    certDir = lib.mkOption {
      type = lib.types.str;
      default = "${cfg.dataDir}-tls";
      defaultText = lib.literalExpression ''"''${config.bcm.lnd.dataDir}-tls"'';
      description = "World-readable directory of LND's TLS certificate, so clients need no access to `dataDir`.";
    };

    inherit (bcmLib.mkAccountOptions "lnd" "LND") user group;

    tor = bcmLib.mkTorOptions "LND";

    settings = lib.mkOption {
      default = { };
      description = ''
        lnd.conf settings (RFC 42) by section (`"Application Options"`, `Bitcoin`, `Bitcoind`,
        `tor`, ...). The module fills in storage, listeners, bitcoind and Tor.
      '';
      type = lib.types.submodule {
        freeformType = lib.types.attrsOf (lib.types.attrsOf bcmLib.settingsAtom);
      };
    };

    walletPasswordFile = lib.mkOption {
      type = lib.types.str;
      default = "${secretsDir}/lnd-wallet-password";
      description = "Wallet password, generated at first start; LND unlocks the wallet with it.";
    };

    macaroons = lib.mkOption {
      type = lib.types.attrsOf macaroonType;
      default = { };
      example = lib.literalExpression ''
        {
          backups = { user = "lnd-backups"; permissions = [ "offchain:read" "onchain:read" ]; };
        }
      '';
      description = ''
        Macaroons baked with `lncli bakemacaroon` after every LND start, each with only the
        listed permissions and readable by `user`. Read the path from `.path`.
      '';
    };

    tlsCert = lib.mkOption {
      type = lib.types.str;
      readOnly = true;
      default = "${cfg.certDir}/tls.cert";
      description = "LND's TLS certificate (public), for gRPC and REST clients.";
    };

    networkDir = lib.mkOption {
      type = lib.types.str;
      readOnly = true;
      default = "${cfg.dataDir}/data/chain/bitcoin/${lndNetwork}";
      description = "Directory of the wallet and LND's own macaroons for the active network.";
    };

    adminMacaroon = lib.mkOption {
      type = lib.types.str;
      readOnly = true;
      default = "${cfg.networkDir}/admin.macaroon";
      description = "LND's admin macaroon (readable by the lnd user only).";
    };

    seedMnemonicFile = lib.mkOption {
      type = lib.types.str;
      readOnly = true;
      default = "${cfg.dataDir}/seed-mnemonic";
      description = "The wallet's aezeed mnemonic, written by lndinit before the wallet is created, mode 0600. Back it up; LND never reads it, so it may then be removed.";
    };

    cli = lib.mkOption {
      type = lib.types.package;
      readOnly = true;
      default = pkgs.writeShellScriptBin "lncli" ''
        exec ${cfg.package}/bin/lncli --network=${lndNetwork} --rpcserver=${cfg.rpc.endpoint} \
          --tlscertpath=${cfg.tlsCert} --macaroonpath=${cfg.macaroons.operator.path} "$@"
      '';
      defaultText = lib.literalMD "an `lncli` wrapper using the operator's macaroon";
      description = "`lncli` wrapper for the operator.";
    };
  };

  config = lib.mkMerge [
    {
      # The operator's lncli: everything but macaroon management. Always defined, so the
      # read-only `cli` evaluates even while LND is off.
      bcm.lnd.macaroons.operator = {
        user = "root";
        group = config.bcm.lib.operatorGroup;
        permissions = [
          "address:read"
          "address:write"
          "info:read"
          "info:write"
          "invoices:read"
          "invoices:write"
          "message:read"
          "message:write"
          "offchain:read"
          "offchain:write"
          "onchain:read"
          "onchain:write"
          "peers:read"
          "peers:write"
          "signer:generate"
          "signer:read"
        ];
      };
    }
    (lib.mkIf cfg.enable {
      assertions = [
        {
          assertion = cfg.enable -> bitcoind.enable;
          message = "bcm.lnd needs bitcoind: set bcm.bitcoind.enable = true.";
        }
        {
          assertion = cfg.tor.enforce -> cfg.tor.proxy;
          message = "bcm.lnd.tor.enforce cuts LND off from everything but loopback; enable bcm.lnd.tor.proxy (bcm.tor.enable) or set tor.enforce = false.";
        }
        {
          assertion = cfg.tor.proxy -> torCfg.enable;
          message = "bcm.lnd.tor.proxy needs Tor: set bcm.tor.enable = true.";
        }
        {
          # A snapshot of the data directory would copy itself into itself.
          assertion = snapshots.enable -> snapshots.dir != cfg.dataDir && !lib.hasPrefix "${cfg.dataDir}/" snapshots.dir;
          message = "bcm.lnd.snapshots.dir (${snapshots.dir}) is inside bcm.lnd.dataDir; put it beside it, on the same file system (by default ${cfg.dataDir}-snapshots).";
        }
      ];

      bcm.lnd.tor = {
        proxy = lib.mkDefault torCfg.enable;
        enforce = lib.mkDefault torCfg.enforce;
      };

      # What LND needs from bitcoind: its own RPC user for the calls its chain backend makes
      # (LND v0.20 chainreg and chainfee, btcwallet's bitcoind client, btcd's rpcclient).
      bcm.bitcoind.rpc.users.lnd = {
        owner = cfg.user;
        whitelist = [
          "estimatesmartfee"
          "getblock"
          "getblockchaininfo"
          "getblockhash"
          "getblockheader"
          # Taproot check: getblockchaininfo no longer lists soft forks.
          "getdeploymentinfo"
          # rpcclient tells btcd from bitcoind by calling getinfo and expecting "method not found";
          # bitcoind answers a call outside the whitelist with 403 instead, which fails LND at start.
          "getinfo"
          "getmempoolinfo"
          "getnetworkinfo"
          # Only on a pruned bitcoind: LND fetches pruned blocks from its peers.
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
      };

      bcm.lnd.settings = lib.mkMerge [
        {
          "Application Options" = {
            alias = cfg.alias;
            # Each path on its own, never `lnddir`: LND resets the certificate, key, data, log
            # and Let's Encrypt paths to defaults under `lnddir` whenever it is set (config.go,
            # "This option overwrites all other directory options"), so the certificate would
            # never reach certDir. The layout is the one `lnddir = dataDir` gives.
            datadir = "${cfg.dataDir}/data";
            logdir = "${cfg.dataDir}/logs";
            letsencryptdir = "${cfg.dataDir}/letsencrypt";
            "watchtower.towerdir" = "${cfg.dataDir}/data/watchtower";
            listen = bcmLib.hostPort cfg.address cfg.port;
            rpclisten = cfg.rpc.endpoint;
            restlisten = bcmLib.hostPort cfg.restAddress cfg.restPort;
            tlscertpath = cfg.tlsCert;
            tlskeypath = "${cfg.dataDir}/tls.key";
            # Autofill lists the host's interfaces over netlink, which the sandbox refuses (and
            # would put every interface address and the hostname in the certificate). Clients
            # connect on loopback, which the certificate always covers.
            tlsdisableautofill = true;
            tlsextraip = lib.unique (
              lib.filter (a: !bcmLib.isLoopback a && a != "0.0.0.0" && a != "::") [
                cfg.rpc.address
                cfg.restAddress
              ]
            );
            wallet-unlock-password-file = cfg.walletPasswordFile;
          };
          Bitcoin = {
            "bitcoin.${lndNetwork}" = true;
            "bitcoin.node" = "bitcoind";
          };
          Bitcoind = {
            "bitcoind.rpchost" = bitcoind.rpc.endpoint;
            "bitcoind.rpcuser" = rpcUser.name;
            "bitcoind.zmqpubrawblock" = bitcoind.zmq.endpoints.rawblock;
            "bitcoind.zmqpubrawtx" = bitcoind.zmq.endpoints.rawtx;
          };
        }
        (lib.mkIf cfg.tor.proxy {
          tor = {
            "tor.active" = true;
            "tor.socks" = torCfg.socksEndpoint;
            "tor.streamisolation" = true;
          };
        })
      ];

      bcm.tor.onionServices.lnd = lib.mkIf torCfg.enable {
        map = [
          {
            port = cfg.port;
            target.port = cfg.port;
          }
        ];
      };

      bcm.lib.generatedSecrets.lnd-wallet-password = {
        file = cfg.walletPasswordFile;
        owner = cfg.user;
        group = cfg.group;
        script = "openssl rand -hex 32 | tr -d '\\n'";
      };

      bcm.operator.tools = [ cfg.cli ];
      # `bcm-tools lnd rollback`, run by root.
      environment.systemPackages = lib.optional snapshots.enable toolsPackage;

      systemd.tmpfiles.rules = [
        "d ${secretsDir}/lnd-macaroons 0711 root root - -"
      ];

      systemd.services.lnd = {
        description = "LND Lightning daemon (${config.bcm.network})";
        wantedBy = [ "multi-user.target" ];
        requires = [
          "bitcoind.service"
          "bcm-secrets.service"
        ]
        ++ lib.optional announceOnion "tor.service";
        after = [
          "bitcoind.service"
          "bcm-secrets.service"
        ]
        ++ lib.optional torCfg.enable "tor.service";
        unitConfig.RequiresMountsFor = [
          cfg.dataDir
          cfg.certDir
          secretsDir
        ]
        ++ lib.optional snapshots.enable snapshots.dir;
        restartTriggers = [ configFile ];
        serviceConfig =
          hardening.strict
          // bcmLib.peerNetworkAccess cfg.tor
          // {
            User = cfg.user;
            Group = cfg.group;
            RuntimeDirectory = "lnd";
            RuntimeDirectoryMode = "0700";
            LoadCredential = lib.optional announceOnion "onion-address:${onion.hostnameFile}";
            ExecStartPre = [
              # "+": after the tier is mounted, as root (lib/default.nix, mkDirsScript).
              "+${dirsScript}"
            ]
            # Before anything else touches the data.
            ++ lib.optional snapshots.enable prepareStart
            ++ [
              "${initWallet}"
              "${prepareConfig}"
            ];
            ExecStart = if snapshots.enable then "${startLnd}" else "${cfg.package}/bin/lnd --configfile=${runtimeConfig}";
            ExecStartPost = [
              # "+": baking macaroons for other users needs root to hand them over.
              "+${postStart}"
            ]
            # "-": a record LND could not give leaves a rollback to refuse, not LND to stop.
            ++ lib.optional snapshots.enable "-${recordState false}";
            # While LND still runs, so the record is the last state before it stops.
            ExecStop = lib.mkIf snapshots.enable "-${recordState true}";
            RestartPreventExitStatus = lib.mkIf snapshots.enable (toString exitRefused);
            ReadWritePaths = [
              cfg.dataDir
              cfg.certDir
            ]
            ++ lib.optional snapshots.enable snapshots.dir;
            Restart = "on-failure";
            RestartSec = "10s";
            TimeoutStartSec = "10min";
            TimeoutStopSec = "10min";
          };
      };

      users.users.${cfg.user} = {
        isSystemUser = true;
        group = cfg.group;
        home = cfg.dataDir;
        description = "LND Lightning daemon";
      };
      users.groups.${cfg.group} = { };
    })
  ];
}
