# A single-node Kafka in KRaft mode (broker and controller in one process) for the event stream:
# logs on the fast tier, SASL/PLAIN listeners on loopback with a generated password per client,
# and topics declared in Nix. Written here rather than wrapping nixpkgs' services.apache-kafka so
# credentials stay out of the store and the unit uses the shared hardening library.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.bcm.kafka;
  bcmLib = import ./lib { inherit lib; };
  hardening = config.bcm.lib.hardening;
  secretsDir = config.bcm.lib.generatedSecretsDir;

  toProperty = value: if lib.isList value then lib.concatMapStringsSep "," toString value else lib.generators.mkValueStringDefault { } value;
  propertiesFormat = pkgs.formats.javaProperties { };
  # The JAAS lines with the passwords are appended at start from a host-side secret.
  serverProperties = propertiesFormat.generate "server.properties" (
    lib.mapAttrs (_: toProperty) (bcmLib.withoutNulls cfg.settings)
  );
  runtimeProperties = "/run/kafka/server.properties";
  jaasFile = "${secretsDir}/kafka-jaas.properties";
  clusterIdFile = "${cfg.dataDir}/cluster-id";
  # retentionBytes budgets the whole broker (the spec plans disk with it); Kafka's own limit
  # applies to each partition, so the budget is shared among the declared partitions.
  declaredPartitions = lib.foldl' (sum: topic: sum + topic.partitions) 0 (lib.attrValues cfg.topics);
  retentionPerPartition = if cfg.retentionBytes == null then null else cfg.retentionBytes / lib.max 1 declaredPartitions;
  logDir = "${cfg.dataDir}/logs";

  dirsScript = bcmLib.mkDirsScript pkgs "kafka" (
    map
      (path: {
        inherit path;
        mode = "0750";
        inherit (cfg) user group;
      })
      [
        cfg.dataDir
        logDir
      ]
  );

  prepare = pkgs.writeShellScript "kafka-prepare" ''
    set -euo pipefail
    umask 0077
    cat ${serverProperties} ${jaasFile} > ${runtimeProperties}
    if [ ! -s ${clusterIdFile} ]; then
      ${cfg.package}/bin/kafka-storage.sh random-uuid > ${clusterIdFile}.tmp
      mv ${clusterIdFile}.tmp ${clusterIdFile}
    fi
    # KRaft log directories must be formatted once; --ignore-formatted makes this idempotent.
    ${cfg.package}/bin/kafka-storage.sh format --ignore-formatted \
      -t "$(cat ${clusterIdFile})" -c ${runtimeProperties}
  '';

  adminTool = tool: "${cfg.package}/bin/kafka-${tool}.sh --bootstrap-server ${cfg.bootstrapServers} --command-config ${cfg.clients.admin.propertiesFile}";
  topicConfig = topic: lib.concatStringsSep "," (lib.mapAttrsToList (k: v: "${k}=${toString v}") topic.config);

  createTopics = pkgs.writeShellScript "kafka-create-topics" ''
    set -euo pipefail
    for _ in $(seq 1 120); do
      ${adminTool "topics"} --list >/dev/null 2>&1 && break
      sleep 2
    done
    ${lib.concatStrings (
      lib.mapAttrsToList (name: topic: ''
        ${adminTool "topics"} --create --if-not-exists --topic ${lib.escapeShellArg name} \
          --partitions ${toString topic.partitions} --replication-factor 1
        ${lib.optionalString (topic.config != { }) ''
          ${adminTool "configs"} --alter --entity-type topics --entity-name ${lib.escapeShellArg name} \
            --add-config ${lib.escapeShellArg (topicConfig topic)}
        ''}
      '') cfg.topics
    )}
  '';

  clientType = lib.types.submodule (
    { name, config, ... }:
    {
      options = {
        user = lib.mkOption {
          type = lib.types.str;
          description = "Unix user that reads this client's credentials.";
        };
        group = lib.mkOption {
          type = lib.types.str;
          default = "root";
          description = "Group that may also read them (mode 0640 when not root).";
        };
        passwordFile = lib.mkOption {
          type = lib.types.str;
          readOnly = true;
          default = "${secretsDir}/kafka-client-${name}-password";
          description = "The client's SASL password, generated at first start.";
        };
        propertiesFile = lib.mkOption {
          type = lib.types.str;
          readOnly = true;
          default = "${secretsDir}/kafka-client-${name}.properties";
          description = "Kafka client properties (SASL settings and credentials) for `--command-config` or a client library.";
        };
      };
    }
  );
in
{
  imports = [
    ./core.nix
    ./operator.nix
  ];

  options.bcm.kafka = {
    enable = lib.mkEnableOption "Apache Kafka (single-node KRaft) for the event stream";

    package = lib.mkPackageOption pkgs "apacheKafka" { };

    address = lib.mkOption {
      type = lib.types.str;
      default = "127.0.0.1";
      description = "Listener address. Loopback only: the event producers and consumers run on this host.";
    };

    port = lib.mkOption {
      type = lib.types.port;
      default = 9092;
      description = "Client listener port.";
    };

    controllerPort = lib.mkOption {
      type = lib.types.port;
      default = 9093;
      description = "KRaft controller listener port.";
    };

    bootstrapServers = lib.mkOption {
      type = lib.types.str;
      readOnly = true;
      default = bcmLib.hostPort cfg.address cfg.port;
      description = "`bootstrap.servers` for clients.";
    };

    dataDir = bcmLib.mkTierDirOption config "fast" "kafka" "Kafka's log directories and cluster id. Fast tier by default.";

    inherit (bcmLib.mkAccountOptions "kafka" "Kafka") user group;

    heapOptions = lib.mkOption {
      type = lib.types.str;
      default = "-Xms256m -Xmx1g";
      description = "`KAFKA_HEAP_OPTS` for the broker JVM.";
    };

    settings = lib.mkOption {
      default = { };
      description = "server.properties (RFC 42). Lists are joined with commas. The module sets KRaft, listeners and SASL.";
      type = lib.types.submodule { freeformType = lib.types.attrsOf bcmLib.settingsAtom; };
    };

    retentionBytes = lib.mkOption {
      type = lib.types.nullOr lib.types.ints.unsigned;
      default = null;
      example = 21474836480;
      description = ''
        Most bytes the broker keeps across all declared topics (the spec's `retention_gb`), shared
        evenly among their partitions as `log.retention.bytes`; old segments are deleted past it.
        A topic's own `retention.bytes` overrides its share. null keeps Kafka's default (no limit).
      '';
    };

    topics = lib.mkOption {
      default = { };
      example = {
        "bitcoin.blocks" = {
          partitions = 1;
          config."retention.ms" = 604800000;
        };
      };
      description = "Topics created (if missing) after the broker starts; `config` is applied at every start.";
      type = lib.types.attrsOf (
        lib.types.submodule {
          options = {
            partitions = lib.mkOption {
              type = lib.types.ints.positive;
              default = 1;
              description = "Number of partitions.";
            };
            config = lib.mkOption {
              type = lib.types.attrsOf (lib.types.either lib.types.int lib.types.str);
              default = { };
              description = "Topic-level configuration (`retention.ms`, `cleanup.policy`, ...).";
            };
          };
        }
      );
    };

    clients = lib.mkOption {
      type = lib.types.attrsOf clientType;
      default = { };
      description = ''
        SASL/PLAIN clients, each with its own generated password and a properties file readable
        by `user`. `admin` (the broker itself and the topic setup) and `operator` always exist.
      '';
    };

    cli = lib.mkOption {
      type = lib.types.package;
      readOnly = true;
      default = pkgs.writeShellScriptBin "kafka-cli" ''
        # kafka-cli TOOL ARGS...: runs kafka-TOOL.sh (topics, console-consumer, ...) against the
        # local broker with the operator's credentials.
        if [ $# -lt 1 ]; then echo "usage: kafka-cli TOOL [ARGS...]  (e.g. kafka-cli topics --list)" >&2; exit 2; fi
        tool=$1; shift
        case "$tool" in
          console-consumer|console-producer) config_flag=--consumer.config; [ "$tool" = console-producer ] && config_flag=--producer.config ;;
          *) config_flag=--command-config ;;
        esac
        exec ${cfg.package}/bin/kafka-"$tool".sh --bootstrap-server ${cfg.bootstrapServers} "$config_flag" ${cfg.clients.operator.propertiesFile} "$@"
      '';
      defaultText = lib.literalMD "a wrapper around Kafka's tools with the operator's credentials";
      description = "Kafka CLI wrapper for the operator.";
    };
  };

  config = lib.mkMerge [
    {
      # Always defined, so the read-only `cli` evaluates even while Kafka is off.
      bcm.kafka.clients = {
        admin.user = cfg.user;
        operator = {
          user = "root";
          group = config.bcm.lib.operatorGroup;
        };
      };
    }
    (lib.mkIf cfg.enable {
      assertions = [
        {
          assertion = bcmLib.isLoopback cfg.address;
          message = "bcm.kafka.address is ${cfg.address}; Kafka listens on loopback only. Set bcm.kafka.address = \"127.0.0.1\".";
        }
        {
          assertion = cfg.port != cfg.controllerPort;
          message = "bcm.kafka.port and bcm.kafka.controllerPort must differ.";
        }
      ];

      bcm.kafka.settings = {
        "process.roles" = [
          "broker"
          "controller"
        ];
        "node.id" = 1;
        "controller.quorum.voters" = "1@${bcmLib.hostPort "127.0.0.1" cfg.controllerPort}";
        listeners = [
          "CLIENT://${cfg.bootstrapServers}"
          "CONTROLLER://${bcmLib.hostPort "127.0.0.1" cfg.controllerPort}"
        ];
        "advertised.listeners" = "CLIENT://${cfg.bootstrapServers}";
        "inter.broker.listener.name" = "CLIENT";
        "controller.listener.names" = "CONTROLLER";
        # Every local user can reach loopback, so both listeners authenticate.
        "listener.security.protocol.map" = [
          "CLIENT:SASL_PLAINTEXT"
          "CONTROLLER:SASL_PLAINTEXT"
        ];
        "sasl.enabled.mechanisms" = "PLAIN";
        "sasl.mechanism.inter.broker.protocol" = "PLAIN";
        "sasl.mechanism.controller.protocol" = "PLAIN";
        "log.dirs" = logDir;
        "log.retention.bytes" = retentionPerPartition;
        "num.partitions" = lib.mkDefault 1;
        "offsets.topic.replication.factor" = 1;
        "transaction.state.log.replication.factor" = 1;
        "transaction.state.log.min.isr" = 1;
        # Topics are declared in Nix; a typo in a producer must not create a new one.
        "auto.create.topics.enable" = lib.mkDefault false;
      };

      bcm.lib.generatedSecrets = lib.mkMerge (
        lib.mapAttrsToList (name: client: {
          "kafka-client-${name}-password" = {
            file = client.passwordFile;
            owner = client.user;
            group = client.group;
            mode = if client.group == "root" then "0600" else "0640";
            script = "openssl rand -hex 32 | tr -d '\\n'";
          };
          "kafka-client-${name}.properties" = {
            file = client.propertiesFile;
            owner = client.user;
            group = client.group;
            mode = if client.group == "root" then "0600" else "0640";
            derived = true;
            script = ''
              echo "security.protocol=SASL_PLAINTEXT"
              echo "sasl.mechanism=PLAIN"
              printf 'sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="%s" password="%s";\n' \
                ${lib.escapeShellArg name} "$(cat ${lib.escapeShellArg client.passwordFile})"
            '';
          };
        }) cfg.clients
        ++ [
          {
            # The broker's JAAS settings: its own login as admin, and every client's password.
            kafka-jaas = {
              file = jaasFile;
              owner = cfg.user;
              group = cfg.group;
              derived = true;
              script = ''
                jaas="org.apache.kafka.common.security.plain.PlainLoginModule required"
                jaas="$jaas username=\"admin\" password=\"$(cat ${lib.escapeShellArg cfg.clients.admin.passwordFile})\""
                ${lib.concatStrings (
                  lib.mapAttrsToList (name: client: ''
                    jaas="$jaas user_${name}=\"$(cat ${lib.escapeShellArg client.passwordFile})\""
                  '') cfg.clients
                )}
                echo "listener.name.client.plain.sasl.jaas.config=$jaas;"
                echo "listener.name.controller.plain.sasl.jaas.config=$jaas;"
              '';
            };
          }
        ]
      );

      bcm.operator.tools = [ cfg.cli ];

      systemd.services.kafka = {
        description = "Apache Kafka (KRaft, single node)";
        wantedBy = [ "multi-user.target" ];
        requires = [ "bcm-secrets.service" ];
        after = [ "bcm-secrets.service" ];
        unitConfig.RequiresMountsFor = [
          cfg.dataDir
          secretsDir
        ];
        restartTriggers = [ serverProperties ];
        environment = {
          KAFKA_HEAP_OPTS = cfg.heapOptions;
          LOG_DIR = "/run/kafka/logs";
        };
        serviceConfig =
          hardening.strict
          // hardening.loopbackOnly
          // hardening.allowJit
          // {
            User = cfg.user;
            Group = cfg.group;
            RuntimeDirectory = "kafka";
            RuntimeDirectoryMode = "0700";
            ExecStartPre = [
              # "+": after the tier is mounted, as root (lib/default.nix, mkDirsScript).
              "+${dirsScript}"
              "${prepare}"
            ];
            ExecStart = "${cfg.package}/bin/kafka-server-start.sh ${runtimeProperties}";
            ReadWritePaths = [ cfg.dataDir ];
            # The JVM exits with 143 on SIGTERM.
            SuccessExitStatus = "0 143";
            Restart = "on-failure";
            TimeoutStopSec = "5min";
            LimitNOFILE = 65536;
          };
      };

      systemd.services.kafka-topics = lib.mkIf (cfg.topics != { }) {
        description = "Create the Kafka topics declared in Nix";
        wantedBy = [ "multi-user.target" ];
        requires = [ "kafka.service" ];
        after = [ "kafka.service" ];
        partOf = [ "kafka.service" ];
        environment.KAFKA_HEAP_OPTS = "-Xmx256m";
        serviceConfig =
          hardening.strict
          // hardening.loopbackOnly
          // hardening.allowJit
          // {
            Type = "oneshot";
            RemainAfterExit = true;
            User = cfg.user;
            Group = cfg.group;
            ExecStart = "${createTopics}";
          };
      };

      users.users.${cfg.user} = {
        isSystemUser = true;
        group = cfg.group;
        home = cfg.dataDir;
        description = "Apache Kafka";
      };
      users.groups.${cfg.group} = { };
    })
  ];
}
