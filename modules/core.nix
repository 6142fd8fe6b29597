# What every bcm service shares: the network, the two storage tiers, the hardening library,
# the operator group, and the generator of host-side secrets.
{
  config,
  options,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.bcm;
  # A host may have no bulk tier when nothing is placed there; only check what is set.
  definedTiers = lib.filter (tier: options.bcm.storage.${tier}.isDefined) [
    "fast"
    "bulk"
  ];
  bcmLib = import ./lib { inherit lib; };
  secretsCfg = cfg.lib.generatedSecrets;
  enabledSecrets = lib.filterAttrs (_: secret: secret.enable) secretsCfg;
  primarySecrets = lib.filterAttrs (_: secret: !secret.derived) enabledSecrets;
  derivedSecrets = lib.filterAttrs (_: secret: secret.derived) enabledSecrets;

  # Writes one secret through a temporary file in the same directory, so an interrupted run
  # never leaves a half-written secret behind, then hands it to its owner.
  writeSecret = name: secret: ''
    secret_file=${lib.escapeShellArg secret.file}
    ${lib.optionalString (!secret.derived) ''if [ ! -e "$secret_file" ]; then''}
      install -d -m 0711 "$(dirname "$secret_file")"
      tmp=$(mktemp "$secret_file.XXXXXX")
      ( ${secret.script} ) > "$tmp"
      [ -s "$tmp" ] || { echo "bcm-secrets: generator for ${name} wrote nothing" >&2; rm -f "$tmp"; exit 1; }
      mv "$tmp" "$secret_file"
    ${lib.optionalString (!secret.derived) "fi"}
    chown ${secret.owner}:${secret.group} "$secret_file"
    chmod ${secret.mode} "$secret_file"
  '';
in
{
  options.bcm = {
    network = lib.mkOption {
      type = lib.types.enum [
        "mainnet"
        "testnet4"
        "signet"
        "regtest"
      ];
      default = "mainnet";
      description = "The network every service runs on. Monero maps testnet4 to its testnet, signet to stagenet.";
    };

    storage = {
      fast = lib.mkOption {
        type = lib.types.str;
        example = "/srv/fast";
        description = ''
          Mount point of the fast tier (NVMe). Chainstate, indexes, wallets, Fulcrum, LND and
          Kafka live here by default. The host's `storage.nix` mounts the device.
        '';
      };
      bulk = lib.mkOption {
        type = lib.types.str;
        example = "/srv/bulk";
        description = ''
          Mount point of the bulk tier (HDD, possibly NFS). bitcoind's block files and monerod's
          chain live here by default.
        '';
      };
    };

    lib = {
      hardening = lib.mkOption {
        type = lib.types.attrsOf (lib.types.attrsOf lib.types.anything);
        readOnly = true;
        default = bcmLib.hardening;
        description = ''
          The shared systemd hardening library: `strict` plus named relaxations
          (`loopbackOnly`, `anyAddress`, `allowJit`, ...). Units outside bcm can use it too:
          `serviceConfig = config.bcm.lib.hardening.strict // { ... }`.
        '';
      };

      operatorGroup = lib.mkOption {
        type = lib.types.str;
        readOnly = true;
        default = "bcm-operator";
        description = "Group of the operator user; it may read CLI credentials and onion addresses.";
      };

      generatedSecretsDir = lib.mkOption {
        type = lib.types.str;
        default = "/var/lib/bcm-secrets";
        description = ''
          Directory of the secrets bcm generates on the host at first start (RPC passwords, the
          LND wallet password, Kafka credentials, baked macaroons). Never in the Nix store.
          Operator-provided secrets decrypted from age files live elsewhere (`bcm.secretsDir`).
        '';
      };

      generatedSecrets = lib.mkOption {
        default = { };
        description = ''
          Secrets the `bcm-secrets` unit creates on the host before any service starts. A primary
          secret is created once, when its file is missing; a derived one (e.g. an `rpcauth` line
          computed from a client's password) is rewritten at every start. Set `enable = false`
          when the file is provided by other means (e.g. agenix).
        '';
        type = lib.types.attrsOf (
          lib.types.submodule (
            { name, ... }:
            {
              options = {
                enable = lib.mkOption {
                  type = lib.types.bool;
                  default = true;
                  description = "Whether bcm generates this secret.";
                };
                file = lib.mkOption {
                  type = lib.types.str;
                  default = "${cfg.lib.generatedSecretsDir}/${name}";
                  description = "Where the secret is written.";
                };
                owner = lib.mkOption {
                  type = lib.types.str;
                  description = "User owning the secret.";
                };
                group = lib.mkOption {
                  type = lib.types.str;
                  default = "root";
                  description = "Group owning the secret.";
                };
                mode = lib.mkOption {
                  type = lib.types.strMatching "0[0-7]{3}";
                  default = "0600";
                  description = "File mode; at most 0640.";
                };
                derived = lib.mkOption {
                  type = lib.types.bool;
                  default = false;
                  description = "Whether the secret is computed from other secrets and rewritten at every start.";
                };
                script = lib.mkOption {
                  type = lib.types.lines;
                  description = "Shell commands that print the secret on stdout. They run as root.";
                };
              };
            }
          )
        );
      };
    };
  };

  config = {
    assertions = [
      {
        assertion = lib.all (tier: lib.hasPrefix "/" cfg.storage.${tier}) definedTiers;
        message = "bcm.storage.fast and bcm.storage.bulk must be absolute mount points (set them in the host's storage.nix).";
      }
    ]
    ++ lib.mapAttrsToList (name: secret: {
      assertion = lib.elem secret.mode [
        "0400"
        "0440"
        "0600"
        "0640"
      ];
      message = "bcm.lib.generatedSecrets.${name}.mode is ${secret.mode}; use 0600 or 0640 (0400/0440 for read-only).";
    }) secretsCfg;

    users.groups.${cfg.lib.operatorGroup} = { };

    systemd.tmpfiles.rules = [
      # Traversable but not listable: each owner reaches its own file by name.
      "d ${cfg.lib.generatedSecretsDir} 0711 root root - -"
    ];

    systemd.services.bcm-secrets = lib.mkIf (enabledSecrets != { }) {
      description = "Generate bcm secrets on the host";
      wantedBy = [ "multi-user.target" ];
      path = [
        pkgs.coreutils
        pkgs.openssl
        pkgs.jq
      ];
      unitConfig.RequiresMountsFor = [ cfg.lib.generatedSecretsDir ];
      script = ''
        set -euo pipefail
        umask 0077
        ${lib.concatStrings (lib.mapAttrsToList writeSecret primarySecrets)}
        ${lib.concatStrings (lib.mapAttrsToList writeSecret derivedSecrets)}
      '';
      serviceConfig =
        cfg.lib.hardening.strict
        // cfg.lib.hardening.fileOwnership
        // {
          Type = "oneshot";
          RemainAfterExit = true;
          # "-": a secret kept outside secretsDir may live in a directory created later.
          ReadWritePaths = [
            cfg.lib.generatedSecretsDir
          ]
          ++ map (dir: "-${dir}") (
            lib.remove cfg.lib.generatedSecretsDir (lib.unique (map (s: dirOf s.file) (lib.attrValues enabledSecrets)))
          );
        };
    };
  };
}
