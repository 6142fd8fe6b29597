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

  # A root ExecStartPre ("+") that creates a service's directories on its storage tier. tmpfiles
  # cannot: it runs before a `nofail` or network mount appears, creates the directories under
  # the empty mount point, the mount then hides them, and the unit fails with 226/NAMESPACE on
  # its ReadWritePaths. The unit's RequiresMountsFor orders this after the mount. On NFS with
  # root squash root may neither create nor chown there: a directory the server's admin made
  # for the service is accepted as it is, otherwise the unit fails with the command to run.
  #   dirs: [ { path; mode; user; group; } ]
  mkDirsScript =
    pkgs: unitName: dirs:
    pkgs.writeShellScript "${unitName}-dirs" ''
      set -euo pipefail
      PATH=${
        lib.makeBinPath [
          pkgs.coreutils
          pkgs.util-linux
        ]
      }
      ensure_dir() {
        local path=$1 mode=$2 user=$3 group=$4
        if [ ! -d "$path" ] && ! mkdir -p "$path" 2>/dev/null && ! runuser -u "$user" -- mkdir -p "$path" 2>/dev/null; then
          echo "${unitName}: cannot create $path (read-only or root-squashed tier?); create it on the server: mkdir -p $path && chown $(id -u "$user"):$(id -g "$group") $path && chmod $mode $path" >&2
          exit 1
        fi
        if [ "$(stat -c %U:%G "$path")" != "$user:$group" ] && ! chown "$user:$group" "$path" 2>/dev/null; then
          echo "${unitName}: cannot give $path to $user:$group (root-squashed NFS?); on the server run: chown $(id -u "$user"):$(id -g "$group") $path" >&2
          exit 1
        fi
        # The owner may change the mode where root-squashed root may not.
        if [ "$(stat -c %a "$path")" != "''${mode#0}" ] && ! chmod "$mode" "$path" 2>/dev/null && ! runuser -u "$user" -- chmod "$mode" "$path"; then
          echo "${unitName}: cannot set mode $mode on $path" >&2
          exit 1
        fi
      }
      ${lib.concatMapStrings (dir: ''
        ensure_dir ${lib.escapeShellArgs [
          dir.path
          dir.mode
          dir.user
          dir.group
        ]}
      '') dirs}
    '';

  # A shell snippet that waits until a TCP port accepts connections, using bash's /dev/tcp so the
  # units need no extra tools.
  waitForPort = address: port: timeoutSeconds: ''
    for _ in $(seq 1 ${toString timeoutSeconds}); do
      if (exec 3<>/dev/tcp/${address}/${toString port}) 2>/dev/null; then break; fi
      sleep 1
    done
  '';
}
