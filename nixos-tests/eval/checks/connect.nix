# bcm.connect: what `bcm-tools connect` reads exists, is readable by the operator, and the
# Lightning wallet's macaroon cannot stop LND, mint macaroons or sign with the node's keys.
{
  lib,
  config,
  rendered,
  check,
  ...
}:
let
  cfg = config.bcm.connect;
  h = import ./lib.nix { inherit lib rendered; };
  manifest = builtins.fromJSON (h.file "bcm-connect.json").text;
  onions = config.bcm.tor.onionServices;
  wallet = config.bcm.lnd.macaroons.wallet;
  forbidden = p: lib.any (prefix: lib.hasPrefix prefix p) [ "info:write" "macaroon:" "message:" "signer:" ];
in
lib.optionals cfg.enable (
  [
    (check "connect: bcm-connect-info prints the manifest for the operator" (
      h.contains "bcm-connect-info" (builtins.unsafeDiscardStringContext cfg.infoFile) && lib.elem "bcm-connect-info" (map (p: p.name or "") config.users.users.${config.bcm.operator.name}.packages)
    ) "the operator has no bcm-connect-info printing the manifest")
    (check "connect: every onion address the manifest names is an onion service" (
      lib.all (w: lib.any (o: o.hostnameFile == w.onionFile) (lib.attrValues onions)) (
        lib.attrValues (removeAttrs manifest [ "network" ])
      )
    ) "an onionFile is not published by bcm.tor")
  ]
  ++ lib.optional config.bcm.lnd.enable (
    check "connect: the wallet macaroon is the operator group's, 0640, with no power over LND itself" (
      wallet.group == config.bcm.lib.operatorGroup
      && wallet.mode == "0640"
      && !(lib.any forbidden wallet.permissions)
      && manifest.lnd.macaroonFile == wallet.path
      && (lib.head onions.lnd-rest.map).target.port == config.bcm.lnd.restPort
    ) "wallet macaroon ${toString wallet.permissions} (${wallet.group}, ${wallet.mode})"
  )
  ++ lib.optional config.bcm.fulcrum.enable (
    check "connect: Fulcrum's certificate published world-readable for wallets to pin" (
      h.contains "fulcrum-publish-cert" "install -D -m 0644 ${config.bcm.fulcrum.tlsCert} ${manifest.electrum.certFile}"
    ) "the certificate is not copied out"
  )
)
