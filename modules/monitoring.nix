# Monitoring for one host: nixpkgs' Prometheus on loopback scrapes the node exporter (memory,
# both storage tiers, the units' states and the toolkit's textfile metrics), bcm's own exporter
# (bitcoind, LND, monerod, Tor, Fulcrum) and Kafka's JMX agent. The alert rules are declared
# here, rendered into one rules file, and each tells the operator what to do. Alertmanager sends
# them to the receivers declared here, with credentials from `bcm.secrets`.
{
  config,
  options,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.bcm.monitoring;
  bcmLib = import ./lib { inherit lib; };
  hardening = config.bcm.lib.hardening;
  network = config.bcm.network;
  secretsDir = config.bcm.lib.generatedSecretsDir;
  inherit (config.bcm)
    bitcoind
    lnd
    monerod
    tor
    kafka
    fulcrum
    ;
  backups = lnd.backups;
  alerts = cfg.alerts;

  yaml = pkgs.formats.yaml { };
  loopback = "127.0.0.1";
  endpoint = port: bcmLib.hostPort loopback port;

  bcmTools =
    if cfg.exporter.package != null then cfg.exporter.package else pkgs.callPackage ../pkgs/bcm-tools { lnd = lnd.package; };

  # --- what is scraped ---------------------------------------------------------------------

  # bcm's exporter serves one path per daemon, so one that hangs fails only its own scrape.
  exporterJobs = lib.filter (job: job.enable) [
    {
      name = "bitcoind";
      enable = bitcoind.enable;
    }
    {
      name = "lnd";
      enable = lnd.enable;
    }
    {
      name = "monerod";
      enable = monerod.enable;
    }
    {
      name = "tor";
      enable = tor.enable;
    }
    {
      name = "fulcrum";
      enable = fulcrum.enable;
    }
  ];

  scrapeJob = name: target: extra: {
    job_name = name;
    static_configs = [ { targets = [ target ]; } ];
  } // extra;

  scrapeConfigs = [
    (scrapeJob "prometheus" (endpoint cfg.port) { })
    (scrapeJob "node" (endpoint cfg.nodeExporter.port) { })
  ]
  ++ map (job: scrapeJob job.name (endpoint cfg.exporter.port) { metrics_path = "/metrics/${job.name}"; }) exporterJobs
  ++ lib.optional kafka.enable (scrapeJob "kafka" (endpoint cfg.kafkaJmxPort) { });

  # The units whose state the node exporter reports, and the service-down alert watches.
  watchedUnits =
    lib.optional bitcoind.enable "bitcoind.service"
    ++ lib.optional fulcrum.enable "fulcrum.service"
    ++ lib.optional lnd.enable "lnd.service"
    ++ lib.optional backups.enable "lnd-backups.service"
    ++ lib.optional monerod.enable "monerod.service"
    ++ lib.optional tor.enable "tor.service"
    ++ lib.optional kafka.enable "kafka.service"
    ++ [ "bcm-exporter.service" ]
    ++ lib.optional cfg.alertmanager.enable "alertmanager.service";

  # A host may have no bulk tier; ask the option system which tiers are set.
  tiers = map (name: {
    inherit name;
    mountPoint = config.bcm.storage.${name};
  }) (lib.filter (name: options.bcm.storage.${name}.isDefined) [ "fast" "bulk" ]);

  # --- alert rules -------------------------------------------------------------------------

  alert =
    {
      name,
      expr,
      for ? "5m",
      severity ? "warning",
      summary,
      description ? null,
      labels ? { },
    }:
    {
      alert = name;
      inherit expr for;
      labels = {
        inherit severity;
      }
      // labels;
      annotations = {
        inherit summary;
      }
      // lib.optionalAttrs (description != null) { inherit description; };
    };

  num = value: lib.strings.floatToString value;
  percent = share: "${toString (builtins.floor (share * 100 + 0.5))} %";
  # A regular expression matching exactly these names. Special characters go in brackets
  # rather than behind a backslash: PromQL strings read `\.` as an (invalid) escape of their
  # own, and so would systemd's command lines. Only `^ [ ] \` still need one.
  literal = lib.replaceStrings
    [ "." "+" "*" "?" "(" ")" "|" "{" "}" "$" "^" "[" "]" "\\" ]
    [ "[.]" "[+]" "[*]" "[?]" "[(]" "[)]" "[|]" "[{]" "[}]" "[$]" "[\\\\^]" "[\\\\[]" "[\\\\]]" "[\\\\\\\\]" ];
  regexOf = names: "(${lib.concatMapStringsSep "|" literal names})";

  tipAge =
    metric:
    lib.optionalString (alerts.maxTipAgeSeconds != null) " or (time() - ${metric} > ${toString alerts.maxTipAgeSeconds})";

  backupTargetsWithLimit = lib.attrNames alerts.backupMaxAgeByTarget;
  # The `target` label the watcher gives a target's metrics (bcm_tools/backup.py).
  backupLabel = target: if lib.hasPrefix "ssh://" target then target else "local:${target}";
  backupTooOld =
    {
      selector,
      maxAge,
      labels ? { },
    }:
    alert {
      name = "LndBackupTooOld";
      # A target with a limit of its own carries it as a label, so promtool does not take the
      # rules for a duplicate.
      inherit labels;
      expr = "bcm_lnd_backup_last_change_timestamp_seconds - ignoring(target) group_right bcm_lnd_backup_last_success_timestamp_seconds${selector} > ${toString maxAge}";
      for = "1m";
      severity = "critical";
      summary = "The newest verified channel backup in {{ $labels.target }} is older than LND's last channel change by more than ${toString maxAge} s: a restore from it would miss channels. Check `journalctl -u lnd-backups` for that target's error and make it reachable and writable.";
    };

  # Each tier's size, free space and capacity plan under one name with a `tier` label, for
  # `bcm-tools status` and the dashboards.
  tierRecords = lib.concatMap (
    tier:
    let
      selector = ''{mountpoint="${tier.mountPoint}"}'';
      labels = {
        tier = tier.name;
        mountpoint = tier.mountPoint;
      };
    in
    [
      {
        record = "bcm_tier_size_bytes";
        expr = "max(node_filesystem_size_bytes${selector})";
        inherit labels;
      }
      {
        record = "bcm_tier_avail_bytes";
        expr = "max(node_filesystem_avail_bytes${selector})";
        inherit labels;
      }
    ]
    ++ lib.optional (cfg.capacityPlanGB.${tier.name} != null) {
      record = "bcm_tier_planned_bytes";
      expr = "vector(${toString (cfg.capacityPlanGB.${tier.name} * 1000000000)})";
      inherit labels;
    }
  ) tiers;

  rules = lib.concatLists [
    tierRecords
    [
      (alert {
        name = "BcmServiceDown";
        expr = ''node_systemd_unit_state{state="active",name=~"${regexOf watchedUnits}"} == 0'';
        severity = "critical";
        summary = "{{ $labels.name }} is not running. Read why with `journalctl -u {{ $labels.name }} -n 50`, fix the cause (disk, configuration, dependency), then `systemctl restart {{ $labels.name }}`.";
      })
      (alert {
        name = "BcmScrapeFailing";
        expr = "up == 0";
        summary = "Prometheus cannot read the {{ $labels.job }} metrics at {{ $labels.instance }}, so its alerts cannot fire. Check that the exporter runs: `systemctl status bcm-exporter prometheus-node-exporter`.";
      })
      (alert {
        name = "BcmDaemonUnreachable";
        expr = "bcm_up == 0";
        severity = "critical";
        summary = "bcm-exporter cannot reach {{ $labels.daemon }} over its RPC. Check `systemctl status {{ $labels.daemon }}` and `journalctl -u bcm-exporter` for the refused call.";
      })
      (alert {
        name = "MemoryPressure";
        expr = "node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes < ${num alerts.minMemoryAvailableShare}";
        for = "15m";
        summary = "Less than ${percent alerts.minMemoryAvailableShare} of memory is available; the kernel may kill a daemon. Lower bitcoind's dbcache or Kafka's heap, or move a service to another host (`bcm-tools spec validate` shows the memory plan).";
      })
    ]
    (lib.concatMap (tier: [
      (alert {
        name = "TierLowOnSpace";
        expr = ''node_filesystem_avail_bytes{mountpoint="${tier.mountPoint}"} / node_filesystem_size_bytes{mountpoint="${tier.mountPoint}"} < ${num alerts.minFreeShare}'';
        for = "10m";
        severity = "critical";
        labels.tier = tier.name;
        summary = "The ${tier.name} tier (${tier.mountPoint}) has less than ${percent alerts.minFreeShare} free. Grow the disk or move a service's data to the other tier (its `data_tier` in the spec) before it fills and the daemons on it stop.";
      })
      (alert {
        name = "TierFillingUp";
        expr = ''predict_linear(node_filesystem_avail_bytes{mountpoint="${tier.mountPoint}"}[6h], ${toString (alerts.fullWithinDays * 86400)}) < 0'';
        for = "1h";
        labels.tier = tier.name;
        summary = "At the rate of the last 6 hours the ${tier.name} tier (${tier.mountPoint}) is full within ${toString alerts.fullWithinDays} days. Plan more space now: compare with `bcm-tools spec validate` and `bcm-tools status`.";
      })
    ]) tiers)
    (lib.optionals bitcoind.enable [
      (alert {
        name = "BitcoindBehind";
        expr = "(bcm_bitcoind_headers - bcm_bitcoind_blocks > ${toString alerts.bitcoindMaxBlocksBehind})${tipAge "bcm_bitcoind_tip_timestamp_seconds"}";
        for = "15m";
        summary = "bitcoind is behind the chain (more than ${toString alerts.bitcoindMaxBlocksBehind} blocks, or its tip is old). Check its peers with `bitcoin-cli getpeerinfo` (Tor up?) and its disk with `bcm-tools status`.";
      })
    ])
    (lib.optionals monerod.enable [
      (alert {
        name = "MonerodBehind";
        expr = "(bcm_monerod_target_height - bcm_monerod_height > ${toString alerts.monerodMaxBlocksBehind})${tipAge "bcm_monerod_tip_timestamp_seconds"}";
        for = "15m";
        summary = "monerod is behind the chain (more than ${toString alerts.monerodMaxBlocksBehind} blocks, or its tip is old). Check `monerod-cli status` and `monerod-cli print_cn` for peers (Tor up?).";
      })
    ])
    (lib.optionals lnd.enable [
      (alert {
        name = "LndNotSyncedToChain";
        expr = "bcm_lnd_synced_to_chain == 0";
        for = "15m";
        severity = "critical";
        summary = "LND is not synced to the chain: it cannot watch its channels for breaches. Check bitcoind first (`bitcoin-cli getblockchaininfo`), then `journalctl -u lnd`.";
      })
      (alert {
        name = "LndNotSyncedToGraph";
        expr = "bcm_lnd_synced_to_graph == 0";
        for = "1h";
        summary = "LND has not synced the channel graph, so payments may fail to find routes. Check that it has peers (`lncli listpeers`) and that Tor works.";
      })
      (alert {
        name = "LndChannelInactive";
        expr = "bcm_lnd_channel_active == 0";
        for = alerts.channelInactiveFor;
        summary = "The channel {{ $labels.chan_point }} with {{ $labels.remote_pubkey }} has been inactive for over ${alerts.channelInactiveFor}. Reconnect (`lncli connect`), and if the peer stays away, consider closing it cooperatively later or force-closing.";
      })
      (alert {
        name = "LndOutboundLiquidityLow";
        expr = "sum without (chan_point, remote_pubkey) (bcm_lnd_channel_local_balance_sat) / sum without (chan_point, remote_pubkey) (bcm_lnd_channel_capacity_sat) < ${num alerts.minOutboundShare}";
        for = "1h";
        summary = "Less than ${percent alerts.minOutboundShare} of channel capacity is on this side: payments out will fail. Open a channel, or loop out / rebalance.";
      })
      (alert {
        name = "LndInboundLiquidityLow";
        expr = "sum without (chan_point, remote_pubkey) (bcm_lnd_channel_remote_balance_sat) / sum without (chan_point, remote_pubkey) (bcm_lnd_channel_capacity_sat) < ${num alerts.minInboundShare}";
        for = "1h";
        summary = "Less than ${percent alerts.minInboundShare} of channel capacity is on the remote side: payments in will fail. Spend or loop out, or ask a peer for an inbound channel.";
      })
    ])
    (lib.optionals backups.enable (
      [
        (alert {
          name = "LndBackupTargetBehind";
          expr = "bcm_lnd_backup_behind == 1";
          for = "15m";
          severity = "critical";
          summary = "The backup target {{ $labels.target }} does not hold LND's current channel set. Check `journalctl -u lnd-backups` for its error (disk full or gone, SSH host down) and fix it; the watcher retries by itself.";
        })
        (backupTooOld {
          selector = lib.optionalString (backupTargetsWithLimit != [ ]) ''{target!~"${regexOf (map backupLabel backupTargetsWithLimit)}"}'';
          maxAge = alerts.backupMaxAgeSeconds;
        })
      ]
      ++ lib.mapAttrsToList (
        target: maxAge:
        backupTooOld {
          selector = ''{target="${backupLabel target}"}'';
          labels.target = backupLabel target;
          inherit maxAge;
        }
      ) alerts.backupMaxAgeByTarget
    ))
    (lib.optionals tor.enable [
      (alert {
        name = "TorNotBootstrapped";
        expr = "bcm_tor_bootstrap_percent < 100";
        for = alerts.torBootstrapFor;
        severity = "critical";
        summary = "Tor has not finished bootstrapping ({{ $value }} %): bitcoind, LND and monerod have no way out. Read `journalctl -u tor` (clock wrong? network down?).";
      })
    ])
    (lib.optionals kafka.enable [
      (alert {
        name = "KafkaUnderReplicated";
        expr = "kafka_server_replicamanager_underreplicatedpartitions > 0";
        for = "10m";
        summary = "Kafka has {{ $value }} under-replicated partitions: a log directory is failing. Check `journalctl -u kafka` and the fast tier.";
      })
      (alert {
        name = "KafkaOffline";
        expr = "kafka_controller_kafkacontroller_offlinepartitionscount > 0 or kafka_controller_kafkacontroller_activecontrollercount == 0";
        severity = "critical";
        summary = "Kafka has no active controller or offline partitions: events are not being stored. Check `journalctl -u kafka`, then `systemctl restart kafka`.";
      })
    ])
    cfg.extraRules
  ];

  rulesFile = yaml.generate "bcm-alerts.rules.yml" {
    groups = [
      {
        name = "bcm";
        inherit rules;
      }
    ];
  };

  # --- the dashboard -------------------------------------------------------------------------

  hostName = config.networking.hostName;
  datasourceUid = "bcm-prometheus";
  # One panel: a title, its PromQL queries (each shown with a legend) and a unit.
  panel =
    id: title: unit: queries:
    {
      inherit id title;
      type = "timeseries";
      datasource = {
        type = "prometheus";
        uid = datasourceUid;
      };
      gridPos = {
        h = 8;
        w = 12;
        x = lib.mod (id - 1) 2 * 12;
        y = (id - 1) / 2 * 8;
      };
      fieldConfig.defaults.unit = unit;
      targets = lib.imap0 (i: q: {
        refId = lib.elemAt [ "A" "B" "C" "D" "E" ] i;
        inherit (q) expr;
        legendFormat = q.legend;
        datasource = {
          type = "prometheus";
          uid = datasourceUid;
        };
      }) queries;
    };
  q = expr: legend: { inherit expr legend; };
  panelSpecs =
    lib.optional bitcoind.enable [
      "bitcoind: blocks and headers"
      "none"
      [
        (q "bcm_bitcoind_blocks" "blocks")
        (q "bcm_bitcoind_headers" "headers")
      ]
    ]
    ++ lib.optional bitcoind.enable [
      "bitcoind: peers and mempool"
      "none"
      [
        (q "bcm_bitcoind_peers" "peers {{direction}}")
        (q "bcm_bitcoind_mempool_transactions" "mempool transactions")
      ]
    ]
    ++ lib.optional monerod.enable [
      "monerod: height and peers"
      "none"
      [
        (q "bcm_monerod_height" "height")
        (q "bcm_monerod_peers" "peers {{direction}}")
      ]
    ]
    ++ lib.optional lnd.enable [
      "LND: balances (sat)"
      "none"
      [
        (q "sum(bcm_lnd_channel_local_balance_sat)" "channels, local")
        (q "sum(bcm_lnd_channel_remote_balance_sat)" "channels, remote")
        (q "bcm_lnd_wallet_balance_sat" "wallet {{state}}")
      ]
    ]
    ++ lib.optional lnd.enable [
      "LND: channels and sync"
      "none"
      [
        (q "bcm_lnd_channels" "channels {{state}}")
        (q "bcm_lnd_synced_to_chain" "synced to chain")
        (q "bcm_lnd_peers" "peers")
      ]
    ]
    ++ lib.optional backups.enable [
      "Channel backups: age of the newest verified copy"
      "s"
      [ (q "time() - bcm_lnd_backup_last_success_timestamp_seconds" "{{target}}") ]
    ]
    ++ [
      [
        "Storage tiers against the capacity plan"
        "bytes"
        (
          [
            (q "bcm_tier_size_bytes - bcm_tier_avail_bytes" "{{tier}} used")
            (q "bcm_tier_size_bytes" "{{tier}} size")
          ]
          ++ lib.optional (lib.any (t: cfg.capacityPlanGB.${t.name} != null) tiers) (q "bcm_tier_planned_bytes" "{{tier}} plan")
        )
      ]
      [
        "Memory available"
        "percentunit"
        [ (q "node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes" "available") ]
      ]
    ]
    ++ lib.optional tor.enable [
      "Tor bootstrap"
      "percent"
      [ (q "bcm_tor_bootstrap_percent" "bootstrapped") ]
    ]
    ++ lib.optional kafka.enable [
      "Kafka partitions"
      "none"
      [
        (q "kafka_server_replicamanager_underreplicatedpartitions" "under-replicated")
        (q "kafka_controller_kafkacontroller_offlinepartitionscount" "offline")
      ]
    ];
  dashboard = {
    uid = "bcm-${hostName}";
    title = "bcm ${hostName}";
    tags = [ "bcm" ];
    timezone = "utc";
    schemaVersion = 39;
    refresh = "1m";
    time = {
      from = "now-24h";
      to = "now";
    };
    panels = lib.imap1 (id: spec: panel id (lib.elemAt spec 0) (lib.elemAt spec 1) (lib.elemAt spec 2)) panelSpecs;
  };
  dashboardFile = pkgs.writeText "bcm-dashboard-${hostName}.json" (builtins.toJSON dashboard);
  dashboardsDir = pkgs.linkFarm "bcm-dashboards" [
    {
      name = "bcm-${hostName}.json";
      path = dashboardFile;
    }
  ];

  # --- Kafka's JMX agent ---------------------------------------------------------------------

  jmxAgent = pkgs.prometheus-jmx-javaagent;
  # Only the two broker health gauges the alerts read; beans no rule matches are not exported.
  jmxConfig = yaml.generate "kafka-jmx-exporter.yml" {
    lowercaseOutputName = true;
    rules = [
      {
        pattern = "kafka.server<type=ReplicaManager, name=UnderReplicatedPartitions><>Value";
        name = "kafka_server_replicamanager_underreplicatedpartitions";
        type = "GAUGE";
      }
      {
        pattern = "kafka.controller<type=KafkaController, name=(OfflinePartitionsCount|ActiveControllerCount)><>Value";
        name = "kafka_controller_kafkacontroller_$1";
        type = "GAUGE";
      }
    ];
  };

  # --- bcm's exporter ------------------------------------------------------------------------

  exporterArgs = [
    "exporter"
    "--listen=${endpoint cfg.exporter.port}"
  ]
  ++ lib.optionals bitcoind.enable [
    "--bitcoind-rpc=http://${bitcoind.rpc.endpoint}"
    "--bitcoind-rpc-user=${bitcoind.rpc.users.monitoring.name}"
    "--bitcoind-rpc-password-file=${bitcoind.rpc.users.monitoring.passwordFile}"
  ]
  ++ lib.optionals lnd.enable [
    "--lnd-rpc=${lnd.rpc.endpoint}"
    "--lnd-tls-cert=${lnd.tlsCert}"
    "--lnd-macaroon=${lnd.macaroons.monitoring.path}"
  ]
  ++ lib.optional monerod.enable "--monerod-rpc=http://${monerod.rpc.endpoint}"
  ++ lib.optionals tor.enable [
    "--tor-control=${endpoint tor.controlPort}"
    "--tor-cookie=${tor.controlCookieFile}"
  ]
  ++ lib.optional fulcrum.enable "--fulcrum=${fulcrum.endpoints.tcp}";

  # --- Alertmanager --------------------------------------------------------------------------

  receiverNames = lib.attrNames cfg.alertmanager.receivers;
  envRef = variable: "\${${variable}}";
  receiverConfig =
    name: receiver:
    {
      inherit name;
    }
    // lib.optionalAttrs (receiver.webhook != null) {
      webhook_configs = [
        (
          {
            url = receiver.webhook.url;
            send_resolved = true;
          }
          // lib.optionalAttrs (receiver.webhook.bearerTokenVariable != null) {
            http_config.authorization = {
              type = "Bearer";
              credentials = envRef receiver.webhook.bearerTokenVariable;
            };
          }
        )
      ];
    }
    // lib.optionalAttrs (receiver.email != null) {
      email_configs = [
        (
          {
            inherit (receiver.email) to from smarthost;
            send_resolved = true;
            require_tls = true;
          }
          // lib.optionalAttrs (receiver.email.authUsername != null) { auth_username = receiver.email.authUsername; }
          // lib.optionalAttrs (receiver.email.authPasswordVariable != null) {
            auth_password = envRef receiver.email.authPasswordVariable;
          }
        )
      ];
    };
  credentialVariables = lib.concatLists (
    lib.mapAttrsToList (
      _: r:
      lib.optional (r.webhook != null && r.webhook.bearerTokenVariable != null) r.webhook.bearerTokenVariable
      ++ lib.optional (r.email != null && r.email.authPasswordVariable != null) r.email.authPasswordVariable
    ) cfg.alertmanager.receivers
  );

  # bcm's hardening in place of what nixpkgs sets on the units it defines: forced, because
  # nixpkgs' own values (ProtectSystem = "full", its address families) would otherwise conflict
  # or be merged into lists that allow more.
  forced = lib.mapAttrs (_: lib.mkForce);

  receiverType = lib.types.submodule {
    options = {
      webhook = lib.mkOption {
        default = null;
        description = "A webhook (ntfy, a chat bridge, ...) that receives Alertmanager's JSON.";
        type = lib.types.nullOr (
          lib.types.submodule {
            options = {
              url = lib.mkOption {
                type = lib.types.str;
                example = "https://ntfy.example/alertmanager";
                description = "Where alerts are POSTed. May name `\${VARIABLE}`s from `environmentSecret`.";
              };
              bearerTokenVariable = lib.mkOption {
                type = lib.types.nullOr (lib.types.strMatching "[A-Z_][A-Z0-9_]*");
                default = null;
                example = "NTFY_TOKEN";
                description = "Variable in `environmentSecret` holding a bearer token sent with each request.";
              };
            };
          }
        );
      };
      email = lib.mkOption {
        default = null;
        description = "E-mail through an SMTP server.";
        type = lib.types.nullOr (
          lib.types.submodule {
            options = {
              to = lib.mkOption {
                type = lib.types.str;
                description = "Recipient address.";
              };
              from = lib.mkOption {
                type = lib.types.str;
                description = "Sender address.";
              };
              smarthost = lib.mkOption {
                type = lib.types.str;
                example = "smtp.example:587";
                description = "SMTP server `host:port`; TLS is required.";
              };
              authUsername = lib.mkOption {
                type = lib.types.nullOr lib.types.str;
                default = null;
                description = "SMTP login.";
              };
              authPasswordVariable = lib.mkOption {
                type = lib.types.nullOr (lib.types.strMatching "[A-Z_][A-Z0-9_]*");
                default = null;
                example = "SMTP_PASSWORD";
                description = "Variable in `environmentSecret` holding the SMTP password.";
              };
            };
          }
        );
      };
    };
  };

  durationType = lib.types.strMatching "[0-9]+[smhdwy]";
  shareType = lib.types.numbers.between 0 1;
in
{
  imports = [
    ./core.nix
    ./operator.nix
    ./secrets.nix
    ./tor.nix
    ./bitcoind.nix
    ./fulcrum.nix
    ./lnd-backups.nix
    ./monerod.nix
    ./kafka.nix
  ];

  options.bcm.monitoring = {
    enable = lib.mkEnableOption "Prometheus, its exporters and the bcm alert rules, all on loopback";

    address = lib.mkOption {
      type = lib.types.str;
      default = loopback;
      readOnly = true;
      description = "Prometheus listens on loopback only; reach it through an SSH tunnel (`bcm-tools status` does).";
    };

    port = lib.mkOption {
      type = lib.types.port;
      default = 9090;
      description = "Prometheus' port on loopback.";
    };

    scrapeInterval = lib.mkOption {
      type = durationType;
      default = "30s";
      description = "How often every target is scraped and the rules evaluated.";
    };

    retentionTime = lib.mkOption {
      type = durationType;
      default = "90d";
      description = "How long Prometheus keeps samples (on the root file system, under /var/lib).";
    };

    nodeExporter.port = lib.mkOption {
      type = lib.types.port;
      default = 9100;
      description = "The node exporter's port on loopback.";
    };

    kafkaJmxPort = lib.mkOption {
      type = lib.types.port;
      default = 9404;
      description = "Loopback port of the JMX agent inside the Kafka broker, for its health gauges.";
    };

    exporter = {
      port = lib.mkOption {
        type = lib.types.port;
        default = 9120;
        description = "Loopback port of `bcm-tools exporter` (one path per daemon: `/metrics/bitcoind`, `/metrics/lnd`, ...).";
      };
      package = lib.mkOption {
        type = lib.types.nullOr lib.types.package;
        default = null;
        description = "The bcm-tools package that runs the exporter; `null` builds this repository's.";
      };
      inherit (bcmLib.mkAccountOptions "bcm-exporter" "bcm's exporter") user group;
    };

    alerts = {
      bitcoindMaxBlocksBehind = lib.mkOption {
        type = lib.types.ints.positive;
        default = 2;
        description = "Blocks bitcoind may lag behind the best header it knows before `BitcoindBehind` fires.";
      };
      monerodMaxBlocksBehind = lib.mkOption {
        type = lib.types.ints.positive;
        default = 5;
        description = "Blocks monerod may lag behind its peers' height before `MonerodBehind` fires.";
      };
      maxTipAgeSeconds = lib.mkOption {
        type = lib.types.nullOr lib.types.ints.positive;
        default = if network == "regtest" then null else 3600;
        defaultText = lib.literalMD "3600, or `null` on regtest (where no blocks come by themselves)";
        description = "Age of the newest block after which bitcoind and monerod count as behind; `null` checks block counts only.";
      };
      channelInactiveFor = lib.mkOption {
        type = durationType;
        default = "1h";
        description = "How long a channel may stay inactive before `LndChannelInactive` fires.";
      };
      minOutboundShare = lib.mkOption {
        type = shareType;
        default = 0.1;
        description = "Share of total channel capacity that must be on this side (outbound liquidity).";
      };
      minInboundShare = lib.mkOption {
        type = shareType;
        default = 0.1;
        description = "Share of total channel capacity that must be on the remote side (inbound liquidity).";
      };
      backupMaxAgeSeconds = lib.mkOption {
        type = lib.types.ints.positive;
        default = 600;
        description = "How long a backup target's newest verified copy may lag behind LND's last channel change.";
      };
      backupMaxAgeByTarget = lib.mkOption {
        type = lib.types.attrsOf lib.types.ints.positive;
        default = { };
        example = {
          "ssh://backup@vault.example:22/srv/lnd-backups" = 3600;
        };
        description = "`backupMaxAgeSeconds` for single targets (as `bcm.lnd.backups.targets` names them).";
      };
      minFreeShare = lib.mkOption {
        type = shareType;
        default = 0.1;
        description = "Share of a storage tier that must stay free.";
      };
      fullWithinDays = lib.mkOption {
        type = lib.types.ints.positive;
        default = 30;
        description = "`TierFillingUp` fires when a tier's recent growth fills it within this many days.";
      };
      minMemoryAvailableShare = lib.mkOption {
        type = shareType;
        default = 0.1;
        description = "Share of memory that must stay available (`MemAvailable`).";
      };
      torBootstrapFor = lib.mkOption {
        type = durationType;
        default = "15m";
        description = "How long Tor may stay short of 100 % bootstrapped.";
      };
    };

    capacityPlanGB = lib.genAttrs [ "fast" "bulk" ] (
      tier:
      lib.mkOption {
        type = lib.types.nullOr lib.types.ints.positive;
        default = null;
        example = 289;
        description = "What the capacity plan (`bcm-tools spec validate`) places on the ${tier} tier, in GB; `bcm-tools status` and the dashboards show the tier against it.";
      }
    );

    grafana = {
      enable = lib.mkEnableOption "nixpkgs' Grafana on loopback with the bcm dashboard of this host provisioned (reach it through an SSH tunnel or an onion service)";
      port = lib.mkOption {
        type = lib.types.port;
        default = 3000;
        description = "Grafana's port on loopback.";
      };
    };

    dashboard = lib.mkOption {
      type = lib.types.attrsOf lib.types.anything;
      readOnly = true;
      default = dashboard;
      defaultText = lib.literalMD "the dashboard of this host";
      description = "The Grafana dashboard of this host (sync, peers, mempool, channels and balances, backups, tiers against the plan, memory, Tor, Kafka), as Grafana's JSON model.";
    };

    extraRules = lib.mkOption {
      type = lib.types.listOf (lib.types.attrsOf lib.types.anything);
      default = [ ];
      description = "More Prometheus alerting or recording rules, in Prometheus' own shape, added to the bcm group.";
    };

    rules = lib.mkOption {
      type = lib.types.listOf (lib.types.attrsOf lib.types.anything);
      readOnly = true;
      default = rules;
      defaultText = lib.literalMD "the alert rules of the enabled services";
      description = "Every rule in the rendered rules file: the alerts and the tiers' recording rules.";
    };

    rulesFile = lib.mkOption {
      type = lib.types.str;
      readOnly = true;
      default = "${rulesFile}";
      defaultText = lib.literalMD "the rendered rules file";
      description = "The rendered rules file (`promtool check rules` and `promtool test rules` read it).";
    };

    alertmanager = {
      enable = lib.mkOption {
        type = lib.types.bool;
        default = cfg.alertmanager.receivers != { };
        defaultText = lib.literalExpression "config.bcm.monitoring.alertmanager.receivers != { }";
        description = "Whether to run Alertmanager on loopback and send alerts to the receivers.";
      };
      port = lib.mkOption {
        type = lib.types.port;
        # Not Alertmanager's usual 9093: bcm.kafka's KRaft controller listens there.
        default = 9095;
        description = "Alertmanager's port on loopback.";
      };
      receivers = lib.mkOption {
        type = lib.types.attrsOf receiverType;
        default = { };
        example = lib.literalExpression ''
          {
            phone.webhook = { url = "https://ntfy.example/bcm"; bearerTokenVariable = "NTFY_TOKEN"; };
            mail.email = { to = "me@example.org"; from = "btc1@example.org"; smarthost = "smtp.example.org:587";
                           authUsername = "btc1"; authPasswordVariable = "SMTP_PASSWORD"; };
          }
        '';
        description = "Where alerts go; every receiver gets every alert.";
      };
      environmentSecret = lib.mkOption {
        type = lib.types.nullOr lib.types.str;
        default = null;
        example = "alertmanager";
        description = ''
          Name of a `bcm.secrets` entry holding `VARIABLE=value` lines (tokens, SMTP passwords).
          Alertmanager reads it at start and fills in each `''${VARIABLE}` of its configuration,
          so no credential is in the Nix store.
        '';
      };
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = credentialVariables != [ ] -> cfg.alertmanager.environmentSecret != null;
        message = "bcm.monitoring.alertmanager: a receiver names a credential variable; set alertmanager.environmentSecret to the bcm.secrets entry that holds it.";
      }
      {
        assertion = cfg.alertmanager.environmentSecret != null -> config.bcm.secrets ? ${cfg.alertmanager.environmentSecret};
        message = "bcm.monitoring.alertmanager.environmentSecret names \"${toString cfg.alertmanager.environmentSecret}\", which is not in bcm.secrets; declare it there (bcm-tools secrets edit NAME).";
      }
      {
        assertion = lib.all (target: lib.elem target backups.targets) backupTargetsWithLimit;
        message = "bcm.monitoring.alerts.backupMaxAgeByTarget names a target that is not in bcm.lnd.backups.targets.";
      }
      (
        let
          # Every loopback port monitoring opens, and Kafka's, which share the same address.
          ports = [
            cfg.port
            cfg.nodeExporter.port
            cfg.exporter.port
            cfg.kafkaJmxPort
          ]
          ++ lib.optional cfg.alertmanager.enable cfg.alertmanager.port
          ++ lib.optionals kafka.enable [
            kafka.port
            kafka.controllerPort
          ];
        in
        {
          assertion = lib.length (lib.unique ports) == lib.length ports;
          message = "bcm.monitoring: port, nodeExporter.port, exporter.port, alertmanager.port, kafkaJmxPort and bcm.kafka's port and controllerPort must all differ (all on 127.0.0.1).";
        }
      )
    ];

    # What the exporter needs from the daemons: a read-only RPC user, a read-only macaroon, Tor's
    # control port.
    bcm.bitcoind.rpc.users.monitoring = lib.mkIf bitcoind.enable {
      owner = cfg.exporter.user;
      whitelist = [
        "getblockchaininfo"
        "getmempoolinfo"
        "getnetworkinfo"
      ];
    };
    bcm.lnd.macaroons.monitoring = lib.mkIf lnd.enable {
      user = cfg.exporter.user;
      permissions = [
        "info:read"
        "offchain:read"
        "onchain:read"
      ];
    };
    bcm.tor.controlPort = lib.mkIf tor.enable (lib.mkDefault 9051);

    services.prometheus = {
      enable = true;
      listenAddress = loopback;
      inherit (cfg) port retentionTime;
      globalConfig = {
        scrape_interval = cfg.scrapeInterval;
        evaluation_interval = cfg.scrapeInterval;
      };
      inherit scrapeConfigs;
      ruleFiles = [ rulesFile ];
      alertmanagers = lib.optional cfg.alertmanager.enable {
        static_configs = [ { targets = [ (endpoint cfg.alertmanager.port) ]; } ];
      };
    };

    services.prometheus.exporters.node = {
      enable = true;
      listenAddress = loopback;
      port = cfg.nodeExporter.port;
      # Only what the rules and dashboards read.
      enabledCollectors = [
        "cpu"
        "filesystem"
        "loadavg"
        "meminfo"
        "pressure"
        "systemd"
        "textfile"
      ];
      extraFlags = [
        "--collector.disable-defaults"
        "--collector.systemd.unit-include=${regexOf watchedUnits}"
      ]
      ++ lib.optional backups.enable "--collector.textfile.directory=${dirOf backups.metricsFile}";
    };

    services.prometheus.alertmanager = lib.mkIf cfg.alertmanager.enable {
      enable = true;
      listenAddress = loopback;
      port = cfg.alertmanager.port;
      environmentFile = lib.mkIf (cfg.alertmanager.environmentSecret != null) config.bcm.secrets.${cfg.alertmanager.environmentSecret}.path;
      configuration = {
        route = {
          receiver = "bcm-discard";
          group_by = [
            "alertname"
            "instance"
          ];
          routes = map (name: {
            receiver = name;
            continue = true;
          }) receiverNames;
        };
        receivers = [ { name = "bcm-discard"; } ] ++ lib.mapAttrsToList receiverConfig cfg.alertmanager.receivers;
      };
    };

    systemd.services.prometheus.serviceConfig = forced (hardening.strict // hardening.loopbackOnly);

    systemd.services.prometheus-node-exporter.serviceConfig =
      forced (
        hardening.strict
        // hardening.loopbackOnly
        # meminfo, stat, pressure and loadavg are outside /proc/<pid>.
        // hardening.allowProcInfo
      )
      // {
        # The backup watcher's textfile is readable by its group.
        SupplementaryGroups = lib.optional backups.enable backups.group;
      };

    systemd.services.alertmanager = lib.mkIf cfg.alertmanager.enable {
      # Receivers are elsewhere (a webhook, an SMTP server), reached directly, not through Tor.
      serviceConfig = forced (hardening.strict // hardening.anyAddress);
    };

    bcm.lib.generatedSecrets = lib.mkIf cfg.grafana.enable {
      # The operator logs in with it (through the SSH tunnel), so the operator group reads it.
      grafana-admin-password = {
        owner = "grafana";
        group = config.bcm.lib.operatorGroup;
        mode = "0640";
        script = "openssl rand -hex 24 | tr -d '\\n'";
      };
      grafana-secret-key = {
        owner = "grafana";
        script = "openssl rand -hex 32 | tr -d '\\n'";
      };
    };

    services.grafana = lib.mkIf cfg.grafana.enable {
      enable = true;
      settings = {
        server = {
          http_addr = loopback;
          http_port = cfg.grafana.port;
        };
        # Grafana's file provider: the values are read from the host, never put in the store.
        security = {
          admin_password = "$__file{${secretsDir}/grafana-admin-password}";
          secret_key = "$__file{${secretsDir}/grafana-secret-key}";
        };
        analytics.reporting_enabled = false;
      };
      provision = {
        enable = true;
        datasources.settings = {
          apiVersion = 1;
          datasources = [
            {
              name = "Prometheus";
              type = "prometheus";
              uid = datasourceUid;
              url = "http://${endpoint cfg.port}";
              isDefault = true;
            }
          ];
        };
        dashboards.settings = {
          apiVersion = 1;
          providers = [
            {
              name = "bcm";
              options.path = dashboardsDir;
            }
          ];
        };
      };
    };

    systemd.services.grafana = lib.mkIf cfg.grafana.enable {
      after = [ "bcm-secrets.service" ];
      requires = [ "bcm-secrets.service" ];
      serviceConfig = forced (hardening.strict // hardening.loopbackOnly);
    };

    systemd.services.kafka.environment.KAFKA_OPTS = lib.mkIf kafka.enable "-javaagent:${jmxAgent}/lib/jmx_prometheus_javaagent-${jmxAgent.version}.jar=${endpoint cfg.kafkaJmxPort}:${jmxConfig}";

    systemd.services.bcm-exporter = {
      description = "bcm metrics of bitcoind, LND, monerod, Tor and Fulcrum";
      wantedBy = [ "multi-user.target" ];
      # Wants, not requires: a daemon that is down shows as bcm_up 0 rather than taking the
      # exporter with it.
      wants = lib.optional lnd.enable "lnd.service";
      after = [ "bcm-secrets.service" ] ++ lib.optional lnd.enable "lnd.service" ++ lib.optional tor.enable "tor.service";
      unitConfig.RequiresMountsFor = [ secretsDir ];
      serviceConfig =
        hardening.strict
        // hardening.loopbackOnly
        // {
          User = cfg.exporter.user;
          Group = cfg.exporter.group;
          # Tor's control cookie is readable by its group.
          SupplementaryGroups = lib.optional tor.enable "tor";
          ExecStart = "${lib.getExe bcmTools} ${lib.escapeShellArgs exporterArgs}";
          Restart = "always";
          RestartSec = "5s";
        };
    };

    users.users.${cfg.exporter.user} = {
      isSystemUser = true;
      group = cfg.exporter.group;
      description = "bcm metrics exporter";
    };
    users.groups.${cfg.exporter.group} = { };
  };
}
