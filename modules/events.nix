# The node's events on Kafka: `bcm-tools events bridge` follows bitcoind, LND and monerod and
# publishes what happens to them to topics declared here on bcm.kafka (docs/events.md). Each
# daemon gives it a read-only credential of its own: an RPC user whitelisted for the backfill
# calls, a macaroon baked for the streams' RPCs, monerod's restricted RPC.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.bcm.events;
  bcmLib = import ./lib { inherit lib; };
  hardening = config.bcm.lib.hardening;
  secretsDir = config.bcm.lib.generatedSecretsDir;
  kafka = config.bcm.kafka;
  bitcoind = config.bcm.bitcoind;
  lnd = config.bcm.lnd;
  monerod = config.bcm.monerod;

  stateDir = "/var/lib/bcm-events";

  # What the bridge calls, and nothing more (bcm_tools/events/bitcoin.py and lightning.py).
  rpcWhitelist = [
    "getblockchaininfo"
    "getblockcount"
    "getblockhash"
    "getblock"
    "getmempoolentry"
  ];
  macaroonPermissions = [
    "uri:/lnrpc.Lightning/GetInfo"
    "uri:/lnrpc.Lightning/SubscribeChannelEvents"
    "uri:/lnrpc.Lightning/SubscribeInvoices"
    "uri:/lnrpc.Lightning/SubscribeTransactions"
    "uri:/routerrpc.Router/TrackPayments"
  ];

  # Block topics are the chain's history in order: one partition. Topics whose key names a
  # thing that changes (a block connected then disconnected, a channel, an invoice, a payment, a
  # wallet transaction gaining confirmations) are compacted to its latest message and kept
  # without a time limit, within the broker's byte budget; mempool and pool additions, each key
  # seen once, keep Kafka's time retention.
  latestPerKey = {
    "cleanup.policy" = "[compact,delete]";
    "retention.ms" = -1;
  };
  topicsOf = {
    bitcoind = {
      "bitcoin.blocks" = {
        partitions = 1;
        config = latestPerKey;
      };
      "bitcoin.txs" = {
        partitions = cfg.partitions;
        config = { };
      };
    };
    monerod = {
      "monero.blocks" = {
        partitions = 1;
        config = latestPerKey;
      };
      "monero.txpool" = {
        partitions = cfg.partitions;
        config = { };
      };
    };
    lnd = lib.genAttrs [ "lnd.channels" "lnd.invoices" "lnd.payments" "lnd.transactions" ] (_: {
      partitions = cfg.partitions;
      config = latestPerKey;
    });
  };
  enabledSources = lib.filter (source: cfg.sources.${source}) (lib.attrNames topicsOf);
  topics = lib.foldl' (all: source: all // topicsOf.${source}) { } enabledSources;
  fullName = topic: "${cfg.topicPrefix}.${topic}";
  orderedTopics = lib.filter (topic: topics ? ${topic}) [
    "bitcoin.blocks"
    "monero.blocks"
  ];

  # Built only when enabled, so hosts without the bridge never evaluate it.
  bcmTools = if cfg.package != null then cfg.package else pkgs.callPackage ../pkgs/bcm-tools { lnd = lnd.package; };

  # The restricted RPC is reached on loopback even when it also listens elsewhere.
  monerodRpc = "http://${
    bcmLib.hostPort (
      if bcmLib.isLoopback monerod.restrictedRpc.address then monerod.restrictedRpc.address else "127.0.0.1"
    ) monerod.restrictedRpc.port
  }";

  bridgeArgs = [
    "events"
    "bridge"
    "--topic-prefix=${cfg.topicPrefix}"
    "--state=${stateDir}/state.json"
    "--kafka=${kafka.bootstrapServers}"
    "--kafka-properties=${kafka.clients.events.propertiesFile}"
    "--metrics=${bcmLib.hostPort "127.0.0.1" cfg.metricsPort}"
  ]
  ++ lib.optionals cfg.sources.bitcoind [
    "--bitcoind-rpc=http://${bitcoind.rpc.endpoint}"
    "--bitcoind-rpc-user=${bitcoind.rpc.users.events.name}"
    "--bitcoind-rpc-password-file=${bitcoind.rpc.users.events.passwordFile}"
    "--bitcoind-zmq-block=${bitcoind.zmq.endpoints.rawblock}"
    "--bitcoind-zmq-tx=${bitcoind.zmq.endpoints.rawtx}"
  ]
  ++ lib.optionals cfg.sources.monerod [
    "--monerod-rpc=${monerodRpc}"
    "--monerod-zmq=${monerod.zmq.pubEndpoint}"
  ]
  ++ lib.optionals cfg.sources.lnd [
    "--lnd-rpc=${lnd.rpc.endpoint}"
    "--lnd-tls-cert=${lnd.tlsCert}"
    "--lnd-macaroon=${lnd.macaroons.events.path}"
  ];

  sourceOption =
    daemon:
    lib.mkOption {
      type = lib.types.bool;
      default = config.bcm.${daemon}.enable;
      defaultText = lib.literalExpression "config.bcm.${daemon}.enable";
      description = "Whether the bridge follows ${daemon}.";
    };
in
{
  imports = [
    ./core.nix
    ./kafka.nix
    ./bitcoind.nix
    ./lnd.nix
    ./monerod.nix
  ];

  options.bcm.events = {
    enable = lib.mkEnableOption "the events bridge: bitcoind's, LND's and monerod's events on Kafka";

    package = lib.mkOption {
      type = lib.types.nullOr lib.types.package;
      default = null;
      description = ''
        The bcm-tools package that runs `events bridge`; `null` builds this repository's, with
        LND's gRPC stubs generated from the source of `bcm.lnd.package`.
      '';
    };

    topicPrefix = lib.mkOption {
      type = lib.types.strMatching "[A-Za-z0-9_-]+";
      example = "home";
      description = "Prefix of every topic, the cluster's name: `<prefix>.bitcoin.blocks`.";
    };

    sources = {
      bitcoind = sourceOption "bitcoind";
      lnd = sourceOption "lnd";
      monerod = sourceOption "monerod";
    };

    partitions = lib.mkOption {
      type = lib.types.ints.positive;
      default = 1;
      description = ''
        Partitions of every topic but the block topics, which have one so blocks stay in chain
        order. Messages with the same key always go to the same partition.
      '';
    };

    metricsPort = lib.mkOption {
      type = lib.types.port;
      default = 9121;
      description = "Loopback port of the bridge's Prometheus metrics (docs/events.md lists them).";
    };

    topics = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      readOnly = true;
      default = map fullName (lib.attrNames topics);
      defaultText = lib.literalMD "the topics of the enabled sources, with the prefix";
      description = "The topics the bridge publishes to, as consumers name them.";
    };

    inherit (bcmLib.mkAccountOptions "bcm-events" "the events bridge") user group;
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = kafka.enable;
        message = "bcm.events publishes to Kafka: set bcm.kafka.enable = true.";
      }
      {
        assertion = enabledSources != [ ];
        message = "bcm.events has no source: enable bitcoind, LND or monerod, or one of bcm.events.sources.";
      }
    ]
    ++ map (daemon: {
      assertion = cfg.sources.${daemon} -> config.bcm.${daemon}.enable;
      message = "bcm.events.sources.${daemon} is on but bcm.${daemon} is not enabled on this host; set bcm.${daemon}.enable = true or bcm.events.sources.${daemon} = false.";
    }) (lib.attrNames topicsOf)
    ++ map (topic: {
      assertion = kafka.topics.${fullName topic}.partitions == 1;
      message = "bcm.kafka.topics.\"${fullName topic}\" must have one partition: its blocks are published in chain order.";
    }) orderedTopics;

    bcm.kafka.topics = lib.mapAttrs' (topic: value: lib.nameValuePair (fullName topic) value) topics;
    bcm.kafka.clients.events.user = cfg.user;

    bcm.bitcoind.rpc.users.events = lib.mkIf cfg.sources.bitcoind {
      owner = cfg.user;
      whitelist = rpcWhitelist;
    };

    bcm.lnd.macaroons.events = lib.mkIf cfg.sources.lnd {
      user = cfg.user;
      permissions = macaroonPermissions;
    };

    systemd.services.bcm-events = {
      description = "bcm events bridge: ${lib.concatStringsSep ", " enabledSources} to Kafka";
      wantedBy = [ "multi-user.target" ];
      # Wants, not requires: a daemon that is down is retried while the others keep flowing,
      # and messages wait in the producer while Kafka is away. The topics must exist first
      # (Kafka creates none by itself), and LND's post-start bakes the macaroon.
      requires = [ "bcm-secrets.service" ];
      wants = [
        "kafka.service"
        "kafka-topics.service"
      ]
      ++ map (daemon: "${daemon}.service") enabledSources;
      after = [
        "bcm-secrets.service"
        "kafka.service"
        "kafka-topics.service"
      ]
      ++ map (daemon: "${daemon}.service") enabledSources;
      unitConfig.RequiresMountsFor = [ secretsDir ];
      serviceConfig =
        hardening.strict
        // hardening.loopbackOnly
        // {
          User = cfg.user;
          Group = cfg.group;
          StateDirectory = "bcm-events";
          StateDirectoryMode = "0700";
          ExecStart = "${lib.getExe bcmTools} ${lib.escapeShellArgs bridgeArgs}";
          # The state file is replaced atomically after each acknowledged block, and a restart
          # backfills what it missed: a stop at any moment loses nothing.
          Restart = "always";
          RestartSec = "5s";
        };
    };

    users.users.${cfg.user} = {
      isSystemUser = true;
      group = cfg.group;
      home = stateDir;
      description = "bcm events bridge";
    };
    users.groups.${cfg.group} = { };
  };
}
