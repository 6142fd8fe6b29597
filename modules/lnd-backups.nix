# Continuous, encrypted, verified copies of LND's static channel backup: `bcm-tools backup
# watch` follows LND's backup stream and writes each new backup, age-encrypted, to every target.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.bcm.lnd.backups;
  bcmLib = import ./lib { inherit lib; };
  lnd = config.bcm.lnd;
  hardening = config.bcm.lib.hardening;
  secretsDir = config.bcm.lib.generatedSecretsDir;

  isSsh = lib.hasPrefix "ssh://";
  localTargets = lib.filter (t: !isSsh t) cfg.targets;
  sshTargets = lib.filter isSsh cfg.targets;

  # The RPCs the watcher makes, and nothing more: it can read and check backups, not move funds.
  # GetInfo gives the node's public key, which goes into every backup's name so that nodes
  # sharing a target each keep their own.
  macaroonPermissions = map (rpc: "uri:/lnrpc.Lightning/${rpc}") [
    "GetInfo"
    "SubscribeChannelBackups"
    "ExportAllChannelBackups"
    "VerifyChanBackup"
  ];

  # Built only when enabled, so hosts without backups never evaluate it.
  bcmTools = if cfg.package != null then cfg.package else pkgs.callPackage ../pkgs/bcm-tools { lnd = lnd.package; };

  dirsScript = bcmLib.mkDirsScript pkgs "lnd-backups" (
    map (path: {
      inherit path;
      mode = "0700";
      inherit (cfg) user group;
    }) localTargets
  );

  stateDir = "/var/lib/lnd-backups";
  knownHostsFile = pkgs.writeText "lnd-backups-known-hosts" (lib.concatLines cfg.ssh.knownHosts);

  watchArgs = [
    "backup"
    "watch"
    "--lnd-rpc=${lnd.rpc.endpoint}"
    "--lnd-tls-cert=${lnd.tlsCert}"
    "--lnd-macaroon=${lnd.macaroons.lnd-backups.path}"
    "--keep=${toString cfg.keep}"
    "--metrics=${cfg.metricsFile}"
    "--check-identity=${cfg.checkIdentityFile}"
  ]
  ++ map (r: "--recipient=${r}") cfg.recipients
  ++ map (t: "--target=${t}") cfg.targets
  ++ lib.optionals (sshTargets != [ ]) [
    "--ssh-identity=${cfg.ssh.identityFile}"
    "--ssh-known-hosts=${knownHostsFile}"
  ];
in
{
  imports = [ ./lnd.nix ];

  options.bcm.lnd.backups = {
    enable = lib.mkEnableOption "continuous, encrypted, verified backups of LND's static channel backup";

    package = lib.mkOption {
      type = lib.types.nullOr lib.types.package;
      default = null;
      description = ''
        The bcm-tools package that runs `backup watch`; `null` builds this repository's, with
        LND's gRPC stubs generated from the source of `bcm.lnd.package`.
      '';
    };

    recipients = lib.mkOption {
      # One line each: `lib.fileContents`, not `builtins.readFile`, for a recipient kept in a file.
      type = lib.types.listOf (lib.types.strMatching "[^\n]+");
      default = [ ];
      example = [ "age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs3290gq" ];
      description = ''
        age recipients every backup is encrypted to: public keys (`age1…`, `ssh-ed25519 …`,
        plugin recipients such as the operator's hardware-wallet key) or paths of files listing
        them. Keep at least one whose identity is off this machine.
      '';
    };

    targets = lib.mkOption {
      type = lib.types.nonEmptyListOf (lib.types.strMatching "(/|ssh://).*");
      default = [ "${config.bcm.storage.bulk}/lnd-backups" ];
      defaultText = lib.literalExpression ''[ "''${config.bcm.storage.bulk}/lnd-backups" ]'';
      example = [
        "/srv/bulk/lnd-backups"
        "ssh://backup@vault.example:22/srv/lnd-backups"
      ];
      description = ''
        Where backups go: absolute local directories (created here; the unit waits for their
        mounts) and `ssh://[user@]host[:port]/absolute/dir` on hosts with a POSIX shell and
        coreutils, whose directory must exist. A target that is down is retried with backoff
        while the others carry on.
      '';
    };

    keep = lib.mkOption {
      type = lib.types.ints.positive;
      default = 30;
      description = "How many versions of this node's backup each target keeps (other nodes' backups in the same target are never touched).";
    };

    ssh = {
      identityFile = lib.mkOption {
        type = lib.types.nullOr lib.types.str;
        default = null;
        example = "/run/secrets/lnd-backups-ssh-key";
        description = "Private SSH key for the `ssh://` targets, readable by `bcm.lnd.backups.user`. Never a store path.";
      };
      knownHosts = lib.mkOption {
        type = lib.types.listOf lib.types.str;
        default = [ ];
        example = [ "[vault.example]:22 ssh-ed25519 AAAAC3Nza..." ];
        description = "`known_hosts` lines for the `ssh://` targets; their host keys are checked strictly.";
      };
    };

    checkIdentityFile = lib.mkOption {
      type = lib.types.str;
      default = "${secretsDir}/lnd-backups-check-identity";
      description = ''
        An age identity kept on this host (generated at first start). Every backup is also
        encrypted to it so the watcher can read each copy back, decrypt it and have LND verify
        it. It grants nothing beyond what the node holds already: LND's own `channel.backup`.
      '';
    };

    metricsFile = lib.mkOption {
      type = lib.types.str;
      readOnly = true;
      default = "${stateDir}/lnd_backups.prom";
      description = ''
        Prometheus textfile with the time of the last good backup per target, the channels it
        covers and the failures; point node-exporter's textfile collector at its directory.
      '';
    };

    inherit (bcmLib.mkAccountOptions "lnd-backups" "the backup watcher") user group;
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = lnd.enable;
        message = "bcm.lnd.backups needs LND: set bcm.lnd.enable = true.";
      }
      {
        assertion = cfg.recipients != [ ];
        message = "bcm.lnd.backups.recipients is empty: name at least one age recipient (the operator's key).";
      }
      {
        assertion = sshTargets != [ ] -> cfg.ssh.identityFile != null && cfg.ssh.knownHosts != [ ];
        message = "bcm.lnd.backups has ssh:// targets: set bcm.lnd.backups.ssh.identityFile and ssh.knownHosts.";
      }
      {
        assertion = cfg.ssh.identityFile == null || !lib.hasPrefix builtins.storeDir cfg.ssh.identityFile;
        message = "bcm.lnd.backups.ssh.identityFile is in the Nix store, readable by everyone; keep it outside.";
      }
    ];

    warnings =
      lib.optional (lib.all (t: lib.hasPrefix "${config.bcm.storage.fast}/" t) cfg.targets)
        "bcm.lnd.backups: every target is on the fast tier with LND itself; a disk failure takes the backups too."
      ++ lib.optional (sshTargets != [ ] && config.bcm.tor.enforce) "bcm.lnd.backups: ssh:// targets are reached directly, not through Tor.";

    bcm.lnd.macaroons.lnd-backups = {
      user = cfg.user;
      permissions = macaroonPermissions;
    };

    bcm.lib.generatedSecrets.lnd-backups-check-identity = {
      file = cfg.checkIdentityFile;
      owner = cfg.user;
      group = cfg.group;
      script = "${pkgs.age}/bin/age-keygen 2>/dev/null";
    };

    systemd.services.lnd-backups = {
      description = "Encrypted, verified LND channel backups";
      wantedBy = [ "multi-user.target" ];
      # lnd.service counts as started only after its post-start step baked our macaroon.
      requires = [ "lnd.service" ];
      after = [
        "lnd.service"
        "bcm-secrets.service"
      ];
      # Waiting for the backup disks' mounts keeps backups off a bare mount point.
      unitConfig.RequiresMountsFor = localTargets ++ [ secretsDir ];
      environment.HOME = stateDir;
      serviceConfig =
        hardening.strict
        # LND's gRPC is on loopback; SSH targets are elsewhere.
        // (if sshTargets == [ ] then hardening.loopbackOnly else hardening.anyAddress)
        // {
          User = cfg.user;
          Group = cfg.group;
          StateDirectory = "lnd-backups";
          StateDirectoryMode = "0755";
          # "+": local targets are often backup disks mounted late (lib/default.nix, mkDirsScript).
          ExecStartPre = lib.mkIf (localTargets != [ ]) "+${dirsScript}";
          ExecStart = "${lib.getExe bcmTools} ${lib.escapeShellArgs watchArgs}";
          ReadWritePaths = localTargets;
          # Every write is temporary file, fsync, rename: a stop at any moment loses nothing.
          Restart = "always";
          # SIGTERM to the watcher alone: it lets each copy under way finish (10 s at most) over
          # its SSH connection, which a SIGTERM to the whole cgroup would cut at once.
          KillMode = "mixed";
          RestartSec = "5s";
        };
    };

    users.users.${cfg.user} = {
      isSystemUser = true;
      group = cfg.group;
      description = "LND channel backups";
    };
    users.groups.${cfg.group} = { };
  };
}
