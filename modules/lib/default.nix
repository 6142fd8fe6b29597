# Plain Nix helpers shared by the bcm modules. Imported with `import ./lib { inherit lib; }`;
# the hardening profile is also published as the read-only option `bcm.lib.hardening`.
{ lib }:
rec {
  hardening = import ./hardening.nix;

  # Network names as each daemon spells them.
  bitcoinChain = {
    mainnet = "main";
    testnet4 = "testnet4";
    signet = "signet";
    regtest = "regtest";
  };

  # Picks the value for the active network from an attrset keyed by bcm.network.
  perNetwork = network: values: values.${network};

  # "host:port", bracketing IPv6 literals.
  hostPort =
    address: port:
    let
      host = if lib.hasInfix ":" address then "[${address}]" else address;
    in
    "${host}:${toString port}";

  # Value type of RFC 42 settings for key=value daemons: atoms or lists of atoms (repeated
  # keys); null drops the key.
  settingsAtom =
    let
      atom = lib.types.oneOf [
        lib.types.bool
        lib.types.int
        lib.types.str
      ];
    in
    lib.types.nullOr (lib.types.either atom (lib.types.listOf atom));

  # Drops nulls and spells booleans as 1/0: bitcoind and monerod read "true" as 0.
  numericBools = lib.mapAttrs (
    _: value:
    if lib.isBool value then
      (if value then 1 else 0)
    else if lib.isList value then
      map (v: if lib.isBool v then (if v then 1 else 0) else v) value
    else
      value
  );
  withoutNulls = lib.filterAttrs (_: value: value != null);

  isLoopback = address: lib.hasPrefix "127." address || address == "::1" || address == "localhost";

  # A directory option that lives on a storage tier unless overridden; `defaultText` shows the
  # tier, so the documentation and the real default cannot drift apart.
  mkTierDirOption =
    config: tier: subdir: description:
    lib.mkOption {
      type = lib.types.str;
      default = "${config.bcm.storage.${tier}}/${subdir}";
      defaultText = lib.literalExpression ''"''${config.bcm.storage.${tier}}/${subdir}"'';
      inherit description;
    };

  # `user` and `group` of a service that runs as a system account of its own name.
  mkAccountOptions = account: serviceName: {
    user = lib.mkOption {
      type = lib.types.str;
      default = account;
      description = "User ${serviceName} runs as.";
    };
    group = lib.mkOption {
      type = lib.types.str;
      default = account;
      description = "Group ${serviceName} runs as.";
    };
  };

  # Options every Tor-aware service module offers. The policy (whether they are on) is set by
  # modules/tor.nix; the service module implements what they mean for its daemon.
  mkTorOptions = serviceName: {
    proxy = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = "Whether ${serviceName} makes its outbound peer connections through Tor's SOCKS port.";
    };
    enforce = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = ''
        Whether the ${serviceName} unit may only reach loopback addresses
        (`IPAddressAllow`/`IPAddressDeny`), so that nothing leaves the host except through Tor.
      '';
    };
  };

  # IPAddress* settings for a service that talks to peers: loopback only when Tor is
  # enforced, anything otherwise.
  peerNetworkAccess = torCfg: if torCfg.enforce then hardening.loopbackOnly else hardening.anyAddress;

  # A shell snippet that waits until a TCP port accepts connections, using bash's /dev/tcp so the
  # units need no extra tools.
  waitForPort = address: port: timeoutSeconds: ''
    for _ in $(seq 1 ${toString timeoutSeconds}); do
      if (exec 3<>/dev/tcp/${address}/${toString port}) 2>/dev/null; then break; fi
      sleep 1
    done
  '';
}
