# bcm.lnd.backups: the watcher's unit, its narrow macaroon, its targets and their guards.
{
  lib,
  config,
  rendered,
  hardening,
  check,
  ...
}:
let
  cfg = config.bcm.lnd.backups;
  lnd = config.bcm.lnd;
  h = import ./lib.nix { inherit lib rendered; };
  unit = config.systemd.services.lnd-backups;
  exec = unit.serviceConfig.ExecStart;
  local = lib.filter (t: !lib.hasPrefix "ssh://" t) cfg.targets;
  ssh = lib.filter (lib.hasPrefix "ssh://") cfg.targets;
  expectedPermissions = map (rpc: "uri:/lnrpc.Lightning/${rpc}") [
    "GetInfo"
    "SubscribeChannelBackups"
    "ExportAllChannelBackups"
    "VerifyChanBackup"
  ];
  macaroon = lnd.macaroons.lnd-backups;
in
lib.optionals cfg.enable [
  (check "lnd-backups: macaroon baked for exactly the backup RPCs, for ${cfg.user} only" (
    lib.sort lib.lessThan macaroon.permissions == lib.sort lib.lessThan expectedPermissions
    && macaroon.user == cfg.user
    && macaroon.mode == "0600"
    && h.contains "lnd-post-start" "bakemacaroon --save_to=/run/lnd/lnd-backups.macaroon"
    && lib.hasInfix "--lnd-macaroon=${macaroon.path}" exec
  ) "the watcher's macaroon is broader, not baked, or not the one it uses")
  (check "lnd-backups: watches LND at ${lnd.rpc.endpoint} after lnd.service" (
    lib.hasInfix "backup watch" exec
    && lib.hasInfix "--lnd-rpc=${lnd.rpc.endpoint}" exec
    && lib.hasInfix "--lnd-tls-cert=${lnd.tlsCert}" exec
    && lib.elem "lnd.service" unit.requires
    && lib.elem "lnd.service" unit.after
  ) "ExecStart or ordering wrong")
  (check "lnd-backups: every recipient and target passed, keep ${toString cfg.keep}" (
    lib.all (r: lib.hasInfix "--recipient=${r}" exec) cfg.recipients
    && lib.all (t: lib.hasInfix "--target=${t}" exec) cfg.targets
    && lib.hasInfix "--keep=${toString cfg.keep}" exec
  ) "a recipient, a target or keep is missing from ExecStart")
  (check "lnd-backups: local targets created 0700 for ${cfg.user} and guarded by their mounts" (
    lib.all (
      t: h.contains "lnd-backups-dirs" "ensure_dir ${t} 0700 ${cfg.user} ${cfg.group}" && lib.elem t unit.unitConfig.RequiresMountsFor
    ) local
  ) "a local target is not created or not guarded")
  (check "lnd-backups: ${if ssh == [ ] then "loopback only" else "SSH targets reachable, host keys pinned"}" (
    if ssh == [ ] then
      unit.serviceConfig.IPAddressAllow == hardening.loopbackOnly.IPAddressAllow
    else
      unit.serviceConfig.IPAddressAllow == hardening.anyAddress.IPAddressAllow
      && lib.hasInfix "--ssh-identity=${cfg.ssh.identityFile}" exec
      && lib.all (line: h.contains "lnd-backups-known-hosts" line) cfg.ssh.knownHosts
  ) "network access or SSH settings wrong")
  (check "lnd-backups: every copy is verified with a host-generated identity outside the store" (
    lib.hasInfix "--check-identity=${cfg.checkIdentityFile}" exec
    && config.bcm.lib.generatedSecrets.lnd-backups-check-identity.owner == cfg.user
    && !lib.hasPrefix "/nix/store" cfg.checkIdentityFile
  ) "check identity missing, not owned by the watcher, or in the store")
  (check "lnd-backups: metrics in ${cfg.metricsFile}" (
    lib.hasInfix "--metrics=${cfg.metricsFile}" exec && unit.serviceConfig.StateDirectory == "lnd-backups"
  ) "metrics file not passed or not in the state directory")
]
