# Tor for the whole host: one SOCKS port every peer-to-peer daemon uses, and onion services the
# service modules declare. Written here rather than wrapping nixpkgs' services.tor so the unit
# uses the shared hardening library and the onion addresses can be handed to the operator and
# to the daemons that announce them.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.bcm.tor;
  bcmLib = import ./lib { inherit lib; };
  hardening = config.bcm.lib.hardening;
  enabledOnions = lib.filterAttrs (_: onion: onion.enable) cfg.onionServices;

  settingsFormat = pkgs.formats.keyValue {
    mkKeyValue = lib.generators.mkKeyValueDefault {
      mkValueString = value: if lib.isBool value then (if value then "1" else "0") else lib.generators.mkValueStringDefault { } value;
    } " ";
    listsAsDuplicateKeys = true;
  };
  settingsFile = settingsFormat.generate "torrc-settings" cfg.settings;

  # HiddenServicePort lines belong to the HiddenServiceDir line above them, so onion services
  # are rendered as ordered blocks rather than as key/value settings.
  onionBlock = name: onion: ''
    HiddenServiceDir ${cfg.dataDir}/onion/${name}
    HiddenServiceVersion 3
    ${lib.concatMapStrings (p: "HiddenServicePort ${toString p.port} ${bcmLib.hostPort p.target.address p.target.port}\n") onion.map}
  '';
  torrc = pkgs.writeText "torrc" ''
    %include ${settingsFile}
    ${lib.concatStrings (lib.mapAttrsToList onionBlock enabledOnions)}
  '';

  exportOnionAddresses = pkgs.writeShellScript "bcm-export-onion-addresses" ''
    set -euo pipefail
    ${lib.concatStrings (
      lib.mapAttrsToList (name: onion: ''
        source=${cfg.dataDir}/onion/${name}/hostname
        for _ in $(${pkgs.coreutils}/bin/seq 1 60); do [ -s "$source" ] && break; ${pkgs.coreutils}/bin/sleep 1; done
        ${pkgs.coreutils}/bin/install -m 0640 -o root -g ${config.bcm.lib.operatorGroup} "$source" ${onion.hostnameFile}
      '') enabledOnions
    )}
  '';
in
{
  imports = [ ./core.nix ];

  options.bcm.tor = {
    enable = lib.mkEnableOption "Tor, used by bitcoind, LND and monerod for all outbound peer traffic";

    package = lib.mkPackageOption pkgs "tor" { };

    socksAddress = lib.mkOption {
      type = lib.types.str;
      default = "127.0.0.1";
      description = "Address of Tor's SOCKS port. Keep it on loopback.";
    };

    socksPort = lib.mkOption {
      type = lib.types.port;
      default = 9050;
      description = "Tor's SOCKS port.";
    };

    socksEndpoint = lib.mkOption {
      type = lib.types.str;
      readOnly = true;
      default = bcmLib.hostPort cfg.socksAddress cfg.socksPort;
      description = "`address:port` of the SOCKS proxy, for the daemons that use it.";
    };

    enforce = lib.mkOption {
      type = lib.types.bool;
      default = cfg.enable;
      defaultText = lib.literalExpression "config.bcm.tor.enable";
      description = ''
        Default of each peer-to-peer service's `tor.enforce`: restrict bitcoind, LND and monerod
        to loopback addresses with `IPAddressAllow`/`IPAddressDeny`, so their only way out is
        Tor's SOCKS port.
      '';
    };

    controlPort = lib.mkOption {
      type = lib.types.nullOr lib.types.port;
      default = null;
      example = 9051;
      description = ''
        Loopback port of Tor's control port, with cookie authentication; off (null) by default.
        `bcm.monitoring` turns it on to read Tor's bootstrap progress. The cookie
        (`controlCookieFile`) is readable by the `tor` group, and whoever reads it controls Tor:
        add only trusted service users to that group.
      '';
    };

    controlCookieFile = lib.mkOption {
      type = lib.types.str;
      readOnly = true;
      default = "/run/tor/control.authcookie";
      description = "The control port's authentication cookie, mode 0640, group `tor`.";
    };

    dataDir = lib.mkOption {
      type = lib.types.str;
      default = "/var/lib/tor";
      description = "Tor's state and onion service keys (small; on the root filesystem).";
    };

    onionAddressesDir = lib.mkOption {
      type = lib.types.str;
      readOnly = true;
      default = "/var/lib/bcm-onion";
      description = "Where each onion address is published as a file readable by the operator.";
    };

    settings = lib.mkOption {
      default = { };
      description = "torrc settings (RFC 42). Lists become repeated lines; booleans become 1/0.";
      type = lib.types.submodule {
        freeformType = settingsFormat.type;
      };
    };

    onionServices = lib.mkOption {
      default = { };
      description = "Onion services; the service modules declare theirs when Tor is enabled.";
      type = lib.types.attrsOf (
        lib.types.submodule (
          { name, ... }:
          {
            options = {
              enable = lib.mkOption {
                type = lib.types.bool;
                default = true;
                description = "Whether to publish this onion service.";
              };
              map = lib.mkOption {
                description = "Onion ports and the local targets they forward to.";
                type = lib.types.listOf (
                  lib.types.submodule {
                    options = {
                      port = lib.mkOption {
                        type = lib.types.port;
                        description = "Port on the onion address.";
                      };
                      target.address = lib.mkOption {
                        type = lib.types.str;
                        default = "127.0.0.1";
                        description = "Local address the port forwards to.";
                      };
                      target.port = lib.mkOption {
                        type = lib.types.port;
                        description = "Local port the port forwards to.";
                      };
                    };
                  }
                );
              };
              hostnameFile = lib.mkOption {
                type = lib.types.str;
                readOnly = true;
                default = "${cfg.onionAddressesDir}/${name}";
                description = "File holding the `.onion` address, readable by the operator group.";
              };
            };
          }
        )
      );
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = bcmLib.isLoopback cfg.socksAddress;
        message = "bcm.tor.socksAddress is ${cfg.socksAddress}; keep Tor's SOCKS port on loopback (127.0.0.1) so other hosts cannot use it.";
      }
      {
        # Both modules write systemd.services.tor and users.users.tor; merged, the unit would
        # get two ExecStart lines and two Types, and one tor would hold the other's DataDirectory.
        assertion = !config.services.tor.enable;
        message = "bcm.tor and nixpkgs' services.tor both run a tor.service; disable services.tor and declare its onion services and settings under bcm.tor (bcm.tor.settings takes any torrc key).";
      }
    ];

    bcm.tor.settings = {
      DataDirectory = cfg.dataDir;
      SOCKSPort = lib.mkDefault [ "${cfg.socksEndpoint} IsolateDestAddr" ];
      # Tor's default, spelled out: the SOCKS port must not become an open proxy.
      SocksPolicy = lib.mkDefault [
        "accept 127.0.0.0/8"
        "accept6 [::1]"
        "reject *"
      ];
      RunAsDaemon = false;
      Log = lib.mkDefault "notice stderr";
    }
    // lib.optionalAttrs (cfg.controlPort != null) {
      ControlPort = bcmLib.hostPort "127.0.0.1" cfg.controlPort;
      CookieAuthentication = true;
      CookieAuthFile = cfg.controlCookieFile;
      CookieAuthFileGroupReadable = true;
    };

    systemd.tmpfiles.rules = [
      "d ${cfg.dataDir} 0700 tor tor - -"
      "d ${cfg.dataDir}/onion 0700 tor tor - -"
      "d ${cfg.onionAddressesDir} 0755 root root - -"
    ];

    systemd.services.tor = {
      description = "Tor, the onion router, for bcm";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      unitConfig.RequiresMountsFor = [ cfg.dataDir ];
      restartTriggers = [ torrc ];
      serviceConfig =
        hardening.strict
        // hardening.anyAddress
        // {
          Type = "notify";
          NotifyAccess = "main";
          User = "tor";
          Group = "tor";
          ExecStart = "${cfg.package}/bin/tor -f ${torrc}";
          # "+": copying the addresses to root-owned, operator-readable files needs root.
          ExecStartPost = "+${exportOnionAddresses}";
          ReadWritePaths = [ cfg.dataDir ];
          # The control cookie's directory: traversable by the tor group that may read it.
          RuntimeDirectory = lib.mkIf (cfg.controlPort != null) "tor";
          RuntimeDirectoryMode = lib.mkIf (cfg.controlPort != null) "0750";
          Restart = "on-failure";
          TimeoutStartSec = "5min";
          LimitNOFILE = 32768;
        };
    };

    # The uid and gid nixpkgs reserves for tor (nixos/modules/misc/ids.nix), so files under
    # /var/lib/tor keep their owner if the host ever moves to nixpkgs' own module.
    users.users.tor = {
      uid = config.ids.uids.tor;
      isSystemUser = true;
      group = "tor";
      home = cfg.dataDir;
      description = "Tor daemon";
    };
    users.groups.tor.gid = config.ids.gids.tor;
  };
}
