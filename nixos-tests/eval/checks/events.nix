# bcm.events: the bridge's unit, the topics it declares on Kafka, and the narrow credential it
# gets from each daemon. The expected calls and permissions are written out here, from what the
# bridge calls (bcm_tools/events/bitcoin.py, lightning.py, monero.py), not read from the module.
{
  lib,
  config,
  rendered,
  hardening,
  check,
  ...
}:
let
  cfg = config.bcm.events;
  h = import ./lib.nix { inherit lib rendered; };
  kafka = config.bcm.kafka;
  bitcoind = config.bcm.bitcoind;
  lnd = config.bcm.lnd;
  monerod = config.bcm.monerod;
  unit = config.systemd.services.bcm-events;
  exec = unit.serviceConfig.ExecStart;
  passes = flag: lib.hasInfix " ${lib.escapeShellArg flag}" exec;
  topic = name: "${cfg.topicPrefix}.${name}";
  ordering = name: lib.elem name unit.after && (lib.elem name unit.wants || lib.elem name unit.requires);

  bitcoinCalls = [
    "getblock"
    "getblockchaininfo"
    "getblockcount"
    "getblockhash"
    "getmempoolentry"
  ];
  lndRpcs = [
    "uri:/lnrpc.Lightning/GetInfo"
    "uri:/lnrpc.Lightning/SubscribeChannelEvents"
    "uri:/lnrpc.Lightning/SubscribeInvoices"
    "uri:/lnrpc.Lightning/SubscribeTransactions"
    "uri:/routerrpc.Router/TrackPayments"
  ];

  sources = lib.filter (s: cfg.sources.${s}) [
    "bitcoind"
    "lnd"
    "monerod"
  ];
  ordered = lib.optional cfg.sources.bitcoind "bitcoin.blocks" ++ lib.optional cfg.sources.monerod "monero.blocks";
  # Keyed by something whose latest message is its state: compacted, no time limit.
  compacted = ordered ++ lib.optionals cfg.sources.lnd [
    "lnd.channels"
    "lnd.invoices"
    "lnd.payments"
    "lnd.transactions"
  ];
  # Keyed by a transaction seen once: plain time retention.
  unkeyedState = lib.optional cfg.sources.bitcoind "bitcoin.txs" ++ lib.optional cfg.sources.monerod "monero.txpool";
  # kafka-configs reads `--add-config a=1,b=[x,y]`: a list value must be bracketed. The config
  # command follows its topic's create command in kafka-create-topics.
  commands = lib.splitString "--entity-name " (h.file "kafka-create-topics").text;
  compactConfig =
    name:
    lib.any (
      command:
      lib.hasPrefix "${lib.escapeShellArg (topic name)} \\\n" command
      && lib.hasInfix "--add-config ${lib.escapeShellArg "cleanup.policy=[compact,delete],retention.ms=-1"}\n" command
    ) commands;
  client = config.bcm.lib.generatedSecrets."kafka-client-events.properties";
in
lib.optionals cfg.enable (
  [
    (check "events: bcm-tools events bridge under the prefix ${cfg.topicPrefix}, state in its StateDirectory" (
      lib.hasInfix " events bridge " exec
      && passes "--topic-prefix=${cfg.topicPrefix}"
      && passes "--state=/var/lib/bcm-events/state.json"
      && unit.serviceConfig.StateDirectory == "bcm-events"
      && unit.serviceConfig.User == cfg.user
      && passes "--metrics=127.0.0.1:${toString cfg.metricsPort}"
    ) "ExecStart ${exec}")
    (check "events: strict hardening, loopback only, no relaxation" (
      lib.all (key: unit.serviceConfig.${key} == hardening.strict.${key}) (
        lib.attrNames (removeAttrs hardening.strict [ "IPAddressDeny" ])
      )
      && unit.serviceConfig.IPAddressAllow == hardening.loopbackOnly.IPAddressAllow
    ) "a strict setting is relaxed or the unit reaches beyond loopback")
    (check "events: logs in to Kafka at ${kafka.bootstrapServers} as its own client, readable by ${cfg.user} alone" (
      passes "--kafka=${kafka.bootstrapServers}"
      && passes "--kafka-properties=${kafka.clients.events.propertiesFile}"
      && client.owner == cfg.user
      && client.mode == "0600"
      && ordering "kafka-topics.service"
      && lib.elem "bcm-secrets.service" unit.requires
    ) "Kafka credentials missing, shared, or the topics may not exist yet")
    (check "events: topics ${lib.concatStringsSep ", " cfg.topics} declared, blocks on one partition" (
      lib.all (name: kafka.topics ? ${topic name}) (compacted ++ unkeyedState)
      && lib.sort lib.lessThan cfg.topics == lib.sort lib.lessThan (map topic (lib.unique (compacted ++ unkeyedState)))
      && lib.all (name: kafka.topics.${topic name}.partitions == 1) ordered
      && lib.all (name: kafka.topics.${topic name}.partitions == cfg.partitions) (lib.subtractLists ordered (compacted ++ unkeyedState))
    ) "a topic is missing or a block topic has more than one partition")
    (check "events: state topics compacted without a time limit, mempool topics not" (
      lib.all compactConfig compacted && lib.all (name: kafka.topics.${topic name}.config == { }) unkeyedState
    ) "cleanup.policy wrong or not rendered for kafka-configs")
  ]
  ++ lib.optional cfg.sources.bitcoind (
    check "events: bitcoind user events whitelisted for ${lib.concatStringsSep ", " bitcoinCalls} only" (
      lib.sort lib.lessThan (h.whitelistOf "events") == bitcoinCalls
      && bitcoind.rpc.users.events.owner == cfg.user
      && passes "--bitcoind-rpc=http://${bitcoind.rpc.endpoint}"
      && passes "--bitcoind-rpc-password-file=${bitcoind.rpc.users.events.passwordFile}"
      && passes "--bitcoind-zmq-block=${bitcoind.zmq.endpoints.rawblock}"
      && passes "--bitcoind-zmq-tx=${bitcoind.zmq.endpoints.rawtx}"
    ) "whitelist ${toString (h.whitelistOf "events")}"
  )
  ++ lib.optional cfg.sources.lnd (
    check "events: LND macaroon for the five stream RPCs only, baked for ${cfg.user}" (
      lib.sort lib.lessThan lnd.macaroons.events.permissions == lndRpcs
      && lnd.macaroons.events.user == cfg.user
      && lnd.macaroons.events.mode == "0600"
      && h.contains "lnd-post-start" "bakemacaroon --save_to=/run/lnd/events.macaroon ${lib.escapeShellArgs lnd.macaroons.events.permissions}"
      && passes "--lnd-macaroon=${lnd.macaroons.events.path}"
      && passes "--lnd-rpc=${lnd.rpc.endpoint}"
      && ordering "lnd.service"
    ) "permissions ${toString lnd.macaroons.events.permissions}"
  )
  ++ lib.optional cfg.sources.monerod (
    check "events: monerod through its restricted RPC (${toString monerod.restrictedRpc.port}) and ZMQ publisher" (
      passes "--monerod-rpc=http://127.0.0.1:${toString monerod.restrictedRpc.port}"
      && passes "--monerod-zmq=${monerod.zmq.pubEndpoint}"
      && !(lib.hasInfix ":${toString monerod.rpc.port}" exec)
    ) "ExecStart ${exec}"
  )
  ++ [
    (check "events: sources ${lib.concatStringsSep ", " sources}, each waited for" (
      lib.all (s: ordering "${s}.service") sources
    ) "a source's unit is not ordered before the bridge")
  ]
)
