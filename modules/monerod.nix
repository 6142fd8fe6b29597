# monerod on the bulk tier: pruned by default, a restricted RPC for the public (through its onion
# service), ZMQ publishing for the event stream, and Tor for transactions and peers.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.bcm.monerod;
  bcmLib = import ./lib { inherit lib; };
  hardening = config.bcm.lib.hardening;
  torCfg = config.bcm.tor;
  network = config.bcm.network;
  onion = torCfg.onionServices.monerod or null;
  announceOnion = torCfg.enable && onion != null && onion.enable;

  # Monero has no testnet4 or signet: its testnet and stagenet play those roles.
  networkSettings = {
    mainnet = { };
    testnet4 = {
      testnet = true;
    };
    signet = {
      stagenet = true;
    };
    regtest = {
      regtest = true;
      offline = true;
      fixed-difficulty = 1;
    };
  };
  defaultPorts = {
    mainnet = {
      p2p = 18080;
      rpc = 18081;
    };
    testnet4 = {
      p2p = 28080;
      rpc = 28081;
    };
    signet = {
      p2p = 38080;
      rpc = 38081;
    };
    regtest = {
      p2p = 18080;
      rpc = 18081;
    };
  };

  settingsFormat = pkgs.formats.keyValue { listsAsDuplicateKeys = true; };
  configFile = settingsFormat.generate "monerod.conf" (bcmLib.numericBools (bcmLib.withoutNulls cfg.settings));

  dirsScript = bcmLib.mkDirsScript pkgs "monerod" [
    {
      path = cfg.dataDir;
      mode = "0750";
      inherit (cfg) user group;
    }
  ];

  startScript = pkgs.writeShellScript "monerod-start" ''
    set -euo pipefail
    args=()
    ${lib.optionalString announceOnion ''
      # Inbound peers over Tor: the onion address is only known at runtime.
      onion=$(cat "$CREDENTIALS_DIRECTORY/onion-address")
      args+=("--anonymous-inbound=$onion:${toString cfg.anonymousInboundPort},127.0.0.1:${toString cfg.anonymousInboundPort},${toString cfg.maxAnonymousInbound}")
    ''}
    exec ${cfg.package}/bin/monerod --config-file=${configFile} --non-interactive "''${args[@]}"
  '';
in
{
  imports = [
    ./core.nix
    ./operator.nix
    ./tor.nix
  ];

  options.bcm.monerod = {
    enable = lib.mkEnableOption "monerod, the Monero daemon";

    package = lib.mkPackageOption pkgs "monero-cli" { };

    address = lib.mkOption {
      type = lib.types.str;
      default = "127.0.0.1";
      description = "P2P bind address. With Tor, inbound peers arrive through the onion service.";
    };

    port = lib.mkOption {
      type = lib.types.port;
      default = defaultPorts.${network}.p2p;
      defaultText = lib.literalMD "18080 (28080 on testnet, 38080 on stagenet)";
      description = "P2P port.";
    };

    rpc = {
      address = lib.mkOption {
        type = lib.types.str;
        default = "127.0.0.1";
        description = "Address of the full (unrestricted) RPC. Keep it on loopback.";
      };
      port = lib.mkOption {
        type = lib.types.port;
        default = defaultPorts.${network}.rpc;
        defaultText = lib.literalMD "18081 (28081 on testnet, 38081 on stagenet)";
        description = "Full RPC port, for the operator and local services.";
      };
      endpoint = lib.mkOption {
        type = lib.types.str;
        readOnly = true;
        default = bcmLib.hostPort cfg.rpc.address cfg.rpc.port;
        description = "`address:port` of the full RPC.";
      };
    };

    restrictedRpc = {
      address = lib.mkOption {
        type = lib.types.str;
        default = "127.0.0.1";
        description = "Address of the restricted RPC; the public reaches it through the onion service.";
      };
      port = lib.mkOption {
        type = lib.types.port;
        default = 18089;
        description = "Restricted RPC port (wallets connect here).";
      };
    };

    zmq = {
      rpcPort = lib.mkOption {
        type = lib.types.port;
        default = 18082;
        description = "Loopback port of monerod's ZMQ RPC (needed for `--zmq-pub`).";
      };
      pubPort = lib.mkOption {
        type = lib.types.port;
        default = 18084;
        description = "Loopback port of the ZMQ publisher (`--zmq-pub`).";
      };
      pubEndpoint = lib.mkOption {
        type = lib.types.str;
        readOnly = true;
        default = "tcp://${bcmLib.hostPort "127.0.0.1" cfg.zmq.pubPort}";
        description = "ZMQ publisher endpoint, for the events service (`json-minimal-chain_main`, `json-minimal-txpool_add`).";
      };
    };

    anonymousInboundPort = lib.mkOption {
      type = lib.types.port;
      default = 18083;
      description = "Loopback port for inbound peers arriving over the onion service.";
    };

    maxAnonymousInbound = lib.mkOption {
      type = lib.types.ints.positive;
      default = 25;
      description = "Most inbound Tor peers.";
    };

    randomxJit = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = ''
        Whether RandomX may compile its programs to machine code (JIT). RandomX JIT needs memory
        that is writable and then executable, which `MemoryDenyWriteExecute` refuses (monerod
        then fails with "mprotect failed"). Off by default: monerod parses untrusted peer data,
        and keeping that protection costs only proof-of-work checks, which run about 3.5 times
        slower in RandomX's interpreter (measured on 2 cores: 0.88 s against 0.25 s per regtest
        block mined and verified). That matters during the initial sync of blocks newer than
        the release's built-in block hashes; a synced node checks one block every two minutes.
        Set it to `true` to sync faster, which lifts `MemoryDenyWriteExecute` for monerod.
      '';
    };

    prune = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = "Whether to prune the blockchain (about a third of the full size).";
    };

    dataDir = bcmLib.mkTierDirOption config "bulk" "monerod" "monerod's LMDB and logs. Bulk tier by default.";

    inherit (bcmLib.mkAccountOptions "monerod" "monerod") user group;

    tor = bcmLib.mkTorOptions "monerod";

    settings = lib.mkOption {
      default = { };
      description = "monerod config-file settings (RFC 42; option names without `--`).";
      type = lib.types.submodule { freeformType = lib.types.attrsOf bcmLib.settingsAtom; };
    };

    cli = lib.mkOption {
      type = lib.types.package;
      readOnly = true;
      default = pkgs.writeShellScriptBin "monerod-cli" ''
        # monerod forwards a command given on its command line (status, sync_info, ...) to the
        # running daemon's RPC.
        exec ${cfg.package}/bin/monerod --rpc-bind-ip=${cfg.rpc.address} --rpc-bind-port=${toString cfg.rpc.port} ${
          lib.concatStringsSep " " (lib.mapAttrsToList (flag: _: "--${flag}") (removeAttrs networkSettings.${network} [ "fixed-difficulty" ]))
        } "$@"
      '';
      defaultText = lib.literalMD "a wrapper running monerod commands against the local RPC";
      description = "CLI wrapper for the operator (`monerod-cli status`).";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = bcmLib.isLoopback cfg.rpc.address;
        message = "bcm.monerod.rpc.address is ${cfg.rpc.address}; the unrestricted RPC must stay on loopback. Publish bcm.monerod.restrictedRpc instead.";
      }
      {
        assertion = cfg.tor.enforce -> cfg.tor.proxy;
        message = "bcm.monerod.tor.enforce cuts monerod off from everything but loopback; enable bcm.monerod.tor.proxy (bcm.tor.enable) or set tor.enforce = false.";
      }
      {
        assertion = cfg.tor.proxy -> torCfg.enable;
        message = "bcm.monerod.tor.proxy needs Tor: set bcm.tor.enable = true.";
      }
      {
        assertion =
          lib.length (
            lib.unique [
              cfg.port
              cfg.rpc.port
              cfg.restrictedRpc.port
              cfg.zmq.rpcPort
              cfg.zmq.pubPort
              cfg.anonymousInboundPort
            ]
          ) == 6;
        message = "bcm.monerod: port, rpc.port, restrictedRpc.port, zmq.rpcPort, zmq.pubPort and anonymousInboundPort must all differ.";
      }
    ];

    bcm.monerod.tor = {
      proxy = lib.mkDefault torCfg.enable;
      enforce = lib.mkDefault torCfg.enforce;
    };

    bcm.monerod.settings = lib.mkMerge [
      networkSettings.${network}
      {
        data-dir = cfg.dataDir;
        prune-blockchain = cfg.prune;
        p2p-bind-ip = cfg.address;
        p2p-bind-port = cfg.port;
        rpc-bind-ip = cfg.rpc.address;
        rpc-bind-port = cfg.rpc.port;
        rpc-restricted-bind-ip = cfg.restrictedRpc.address;
        # No confirm-external-bind: monerod demands it only for a non-loopback rpc-bind-ip, which
        # the assertion above rules out; the restricted bind needs no confirmation.
        rpc-restricted-bind-port = cfg.restrictedRpc.port;
        zmq-rpc-bind-ip = "127.0.0.1";
        zmq-rpc-bind-port = cfg.zmq.rpcPort;
        zmq-pub = cfg.zmq.pubEndpoint;
        no-igd = true;
        log-level = lib.mkDefault 0;
      }
      (lib.mkIf cfg.tor.proxy {
        # Peers and relayed transactions both go through Tor.
        proxy = torCfg.socksEndpoint;
        tx-proxy = "tor,${torCfg.socksEndpoint},16";
        # With `proxy` set monerod already skips its DNS lookups (checkpoints, seeds, updates)
        # unless proxy-allow-dns-leaks is given; said here too so it survives a settings override.
        disable-dns-checkpoints = true;
      })
    ];

    bcm.tor.onionServices.monerod = lib.mkIf torCfg.enable {
      map = [
        {
          port = cfg.anonymousInboundPort;
          target.port = cfg.anonymousInboundPort;
        }
      ];
    };
    bcm.tor.onionServices.monerod-rpc = lib.mkIf torCfg.enable {
      map = [
        {
          port = cfg.restrictedRpc.port;
          target.address = if bcmLib.isLoopback cfg.restrictedRpc.address then cfg.restrictedRpc.address else "127.0.0.1";
          target.port = cfg.restrictedRpc.port;
        }
      ];
    };

    bcm.operator.tools = [ cfg.cli ];

    systemd.services.monerod = {
      description = "Monero daemon (${network})";
      wantedBy = [ "multi-user.target" ];
      requires = lib.optional announceOnion "tor.service";
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ] ++ lib.optional torCfg.enable "tor.service";
      unitConfig.RequiresMountsFor = [ cfg.dataDir ];
      restartTriggers = [ configFile ];
      # RANDOMX_FLAG_JIT (8) masked off: read by monero's rx-slow-hash.c at the first hash.
      environment = lib.optionalAttrs (!cfg.randomxJit) { MONERO_RANDOMX_UMASK = "8"; };
      serviceConfig =
        hardening.strict
        // bcmLib.peerNetworkAccess cfg.tor
        # monerod binds its ZMQ RPC and publisher at every start.
        // hardening.allowNetlink
        // lib.optionalAttrs cfg.randomxJit hardening.allowJit
        // {
          User = cfg.user;
          Group = cfg.group;
          # "+": after the tier is mounted, as root (lib/default.nix, mkDirsScript).
          ExecStartPre = "+${dirsScript}";
          ExecStart = "${startScript}";
          LoadCredential = lib.optional announceOnion "onion-address:${onion.hostnameFile}";
          ReadWritePaths = [ cfg.dataDir ];
          Restart = "on-failure";
          TimeoutStopSec = "10min";
          LimitNOFILE = 16384;
        };
    };

    users.users.${cfg.user} = {
      isSystemUser = true;
      group = cfg.group;
      home = cfg.dataDir;
      description = "Monero daemon";
    };
    users.groups.${cfg.group} = { };
  };
}
