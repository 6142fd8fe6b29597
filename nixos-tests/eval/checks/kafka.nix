{
  lib,
  config,
  options,
  rendered,
  check,
  ...
}:
let
  cfg = config.bcm.kafka;
  h = import ./lib.nix { inherit lib rendered; };
  conf = "server.properties";
  unit = config.systemd.services.kafka;
  topicsScript = "kafka-create-topics";
  # formats.javaProperties writes "key = value" lines (after a comment header), as nixpkgs does.
  property = key: value: h.hasLine conf "${key} = ${value}";
in
lib.optionals cfg.enable (
  [
    (check "kafka: single-node KRaft" (
      property "process.roles" "broker,controller" && property "node.id" "1" && h.contains "kafka-prepare" "kafka-storage.sh format"
    ) "KRaft settings or format step missing")
    (check "kafka: logs on ${cfg.dataDir}${lib.optionalString (h.isDefault options.bcm.kafka.dataDir) " (fast tier)"}" (
      property "log.dirs" "${cfg.dataDir}/logs"
      && (h.isDefault options.bcm.kafka.dataDir -> h.under config.bcm.storage.fast cfg.dataDir)
      && lib.elem cfg.dataDir unit.unitConfig.RequiresMountsFor
    ) "log.dirs not rendered, not on the fast tier or not guarded")
    (check "kafka: listeners on loopback with SASL" (
      property "listeners" "CLIENT://${cfg.bootstrapServers},CONTROLLER://127.0.0.1:${toString cfg.controllerPort}"
      && property "listener.security.protocol.map" "CLIENT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT"
      && lib.hasPrefix "127." cfg.address
    ) "listeners not on loopback or not authenticated")
    (check "kafka: credentials appended from the host, not the store" (
      !(h.contains conf "sasl.jaas.config") && h.contains "kafka-prepare" "${config.bcm.lib.generatedSecretsDir}/kafka-jaas.properties"
    ) "JAAS in store or not included")
  ]
  ++ lib.optionals (cfg.retentionBytes != null) [
    (
      let
        partitions = lib.foldl' (sum: t: sum + t.partitions) 0 (lib.attrValues cfg.topics);
        share = cfg.retentionBytes / lib.max 1 partitions;
      in
      check "kafka: retention budget ${toString cfg.retentionBytes} B shared by ${toString partitions} partitions" (
        property "log.retention.bytes" (toString share) && share * lib.max 1 partitions <= cfg.retentionBytes
      ) "log.retention.bytes is not the budget's per-partition share"
    )
  ]
  ++ lib.optionals (cfg.topics != { }) [
    (check "kafka: topics declared in Nix are created (${lib.concatStringsSep ", " (lib.attrNames cfg.topics)})" (
      lib.all (t: h.contains topicsScript "--topic ${lib.escapeShellArg t}") (lib.attrNames cfg.topics)
    ) "a topic is not created")
  ]
)
