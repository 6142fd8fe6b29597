# bcm.monitoring: Prometheus, its exporters and Alertmanager on loopback; the rendered config
# scrapes every enabled service; every alert carries what to do; credentials stay out of the store.
{
  lib,
  config,
  rendered,
  check,
  ...
}:
let
  cfg = config.bcm.monitoring;
  h = import ./lib.nix { inherit lib rendered; };
  units = config.systemd.services;
  promExec = units.prometheus.serviceConfig.ExecStart;
  nodeExec = units.prometheus-node-exporter.serviceConfig.ExecStart;
  promYml = builtins.fromJSON (h.file "prometheus.yml").text;
  rulesYml = builtins.fromJSON (h.file "bcm-alerts.rules.yml").text;
  alertRules = lib.concatMap (group: lib.filter (rule: rule ? alert) group.rules) rulesYml.groups;
  alertNames = lib.unique (map (rule: rule.alert) alertRules);
  jobs = map (job: job.job_name) promYml.scrape_configs;
  targets = lib.concatMap (job: lib.concatMap (s: s.targets) job.static_configs) promYml.scrape_configs;
  loopbackTarget = target: lib.hasPrefix "127.0.0.1:" target;

  enabled = name: config.bcm.${name}.enable;
  expectedJobs = [
    "prometheus"
    "node"
  ]
  ++ lib.filter enabled [
    "bitcoind"
    "lnd"
    "monerod"
    "tor"
    "fulcrum"
    "kafka"
  ];
  expectedAlerts = [
    "BcmServiceDown"
    "BcmScrapeFailing"
    "BcmDaemonUnreachable"
    "MemoryPressure"
    "TierLowOnSpace"
    "TierFillingUp"
  ]
  ++ lib.optional config.bcm.bitcoind.enable "BitcoindBehind"
  ++ lib.optional config.bcm.monerod.enable "MonerodBehind"
  ++ lib.optionals config.bcm.lnd.enable [
    "LndNotSyncedToChain"
    "LndNotSyncedToGraph"
    "LndChannelInactive"
    "LndOutboundLiquidityLow"
    "LndInboundLiquidityLow"
  ]
  ++ lib.optionals config.bcm.lnd.backups.enable [
    "LndBackupTargetBehind"
    "LndBackupTooOld"
  ]
  ++ lib.optional config.bcm.tor.enable "TorNotBootstrapped"
  ++ lib.optionals config.bcm.kafka.enable [
    "KafkaUnderReplicated"
    "KafkaOffline"
  ];

  am = config.services.prometheus.alertmanager;
  amText = (h.file "alertmanager.yml").text;
  amConfig = builtins.fromJSON amText;
  secretsDir = config.bcm.secretsDir;
  exporterExec = units.bcm-exporter.serviceConfig.ExecStart;
in
lib.optionals cfg.enable (
  [
    (check "monitoring: Prometheus on 127.0.0.1:${toString cfg.port} with the rendered config" (
      lib.hasInfix "--web.listen-address=127.0.0.1:${toString cfg.port}" promExec
      && lib.hasInfix "--config.file=${(h.file "prometheus.yml").path}" promExec
    ) "Prometheus is not on loopback or not started with the rendered prometheus.yml")
    (check "monitoring: scrapes ${lib.concatStringsSep ", " expectedJobs}, all on loopback" (
      lib.sort lib.lessThan jobs == lib.sort lib.lessThan expectedJobs && lib.all loopbackTarget targets
    ) "jobs ${toString jobs}, targets ${toString targets}")
    (check "monitoring: the rules file is loaded and holds ${toString (lib.length expectedAlerts)} alerts, each with a summary" (
      promYml.rule_files == [ cfg.rulesFile ]
      && lib.sort lib.lessThan alertNames == lib.sort lib.lessThan expectedAlerts
      && lib.all (rule: (rule.annotations.summary or "") != "") alertRules
    ) "alerts ${toString alertNames}")
    (check "monitoring: every tier has its space and growth alerts" (
      lib.all (
        tier:
        lib.any (r: r.alert == "TierLowOnSpace" && r.labels.tier == tier) alertRules
        && lib.any (r: r.alert == "TierFillingUp" && r.labels.tier == tier) alertRules
      ) (lib.filter (t: config.bcm.storage ? ${t}) [ "fast" "bulk" ])
    ) "a tier has no alert")
    (check "monitoring: node exporter on loopback, watching every bcm unit" (
      lib.hasInfix "--web.listen-address 127.0.0.1:${toString cfg.nodeExporter.port}" nodeExec
      && lib.all (u: lib.hasInfix (lib.replaceStrings [ "." ] [ "[.]" ] u) nodeExec) (
        lib.filter (u: units ? ${lib.removeSuffix ".service" u}) [
          "bitcoind.service"
          "lnd.service"
          "monerod.service"
          "tor.service"
          "kafka.service"
          "fulcrum.service"
        ]
      )
    ) "node exporter flags wrong")
    (check "monitoring: bcm-exporter on loopback with read-only credentials" (
      lib.hasInfix "--listen=127.0.0.1:${toString cfg.exporter.port}" exporterExec
      && (
        !config.bcm.bitcoind.enable
        || h.whitelistOf "monitoring" == [
          "getblockchaininfo"
          "getmempoolinfo"
          "getnetworkinfo"
        ]
      )
      && (!config.bcm.lnd.enable || lib.all (p: lib.hasSuffix ":read" p) config.bcm.lnd.macaroons.monitoring.permissions)
    ) "the exporter listens elsewhere or its credentials allow writes")
  ]
  ++ lib.optional config.bcm.lnd.backups.enable (
    check "monitoring: the node exporter reads the backup watcher's textfile" (
      lib.hasInfix "--collector.textfile.directory=${dirOf config.bcm.lnd.backups.metricsFile}" nodeExec
      && lib.elem config.bcm.lnd.backups.group (lib.toList units.prometheus-node-exporter.serviceConfig.SupplementaryGroups)
    ) "textfile directory or group missing"
  )
  ++ lib.optional config.bcm.tor.enable (
    check "monitoring: Tor's control port on loopback with cookie authentication" (
      h.contains "torrc-settings" "ControlPort 127.0.0.1:${toString config.bcm.tor.controlPort}"
      && h.contains "torrc-settings" "CookieAuthentication 1"
      && lib.hasInfix "--tor-cookie=${config.bcm.tor.controlCookieFile}" exporterExec
    ) "ControlPort or cookie missing"
  )
  ++ lib.optional config.bcm.kafka.enable (
    check "monitoring: Kafka's JMX agent on 127.0.0.1:${toString cfg.kafkaJmxPort}" (
      lib.hasInfix "=127.0.0.1:${toString cfg.kafkaJmxPort}:" (units.kafka.environment.KAFKA_OPTS or "")
    ) "KAFKA_OPTS has no loopback javaagent"
  )
  ++ lib.optionals cfg.grafana.enable [
    (check "monitoring: Grafana on 127.0.0.1:${toString cfg.grafana.port}, its secrets read from files outside the store" (
      h.contains "config.ini" "http_addr=127.0.0.1"
      && h.contains "config.ini" "http_port=${toString cfg.grafana.port}"
      && h.contains "config.ini" "admin_password=$__file{${config.bcm.lib.generatedSecretsDir}/grafana-admin-password}"
      && h.contains "config.ini" "secret_key=$__file{${config.bcm.lib.generatedSecretsDir}/grafana-secret-key}"
    ) "Grafana listens elsewhere or its password or key is not read from a host file")
    (check "monitoring: the dashboard of ${config.networking.hostName} is provisioned, on the provisioned Prometheus" (
      let
        datasources = (builtins.fromJSON (h.file "datasource.yaml").text).datasources;
        board = builtins.fromJSON (h.file "bcm-dashboard-${config.networking.hostName}.json").text;
      in
      h.contains "bcm-dashboards" "bcm-${config.networking.hostName}.json -> "
      && lib.all (p: lib.all (t: t.datasource.uid == (lib.head datasources).uid) p.targets) board.panels
      && (lib.head datasources).url == "http://127.0.0.1:${toString cfg.port}"
    ) "dashboard not provisioned or on another datasource")
  ]
  ++ lib.optionals cfg.alertmanager.enable [
    (check "monitoring: Alertmanager on loopback, every receiver routed, Prometheus sends to it" (
      am.listenAddress == "127.0.0.1"
      && lib.sort lib.lessThan (map (r: r.receiver) amConfig.route.routes) == lib.sort lib.lessThan (lib.attrNames cfg.alertmanager.receivers)
      && promYml.alerting.alertmanagers != [ ]
    ) "Alertmanager not on loopback or a receiver is not routed")
    (check "monitoring: receiver credentials come from bcm.secrets, as \${VARIABLE}s, never from the store" (
      (cfg.alertmanager.environmentSecret == null || units.alertmanager.serviceConfig.EnvironmentFile == "${secretsDir}/${cfg.alertmanager.environmentSecret}")
      && !(lib.hasInfix "auth_password\":\"" amText && !(lib.hasInfix "auth_password\":\"\${" amText))
    ) "the environment file is not the secret, or a password is written out")
  ]
)
