# What `bcm-tools connect` needs to hand a wallet its connection details, declared here so the
# tool never guesses: which onion service each wallet reaches, on which port, with which
# certificate and, for Zeus, which macaroon. The operator's `bcm-connect-info` prints it as JSON;
# every file it names is readable by the operator group.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.bcm.connect;
  inherit (config.bcm)
    lnd
    fulcrum
    monerod
    tor
    ;
  operatorGroup = config.bcm.lib.operatorGroup;
  onionFile = name: tor.onionServices.${name}.hostnameFile;

  fulcrumCert = "${cfg.publicDir}/fulcrum-tls.cert";
  publishFulcrumCert = pkgs.writeShellScript "fulcrum-publish-cert" ''
    # The certificate lives in Fulcrum's own data directory (0750); wallets pin its copy here.
    ${pkgs.coreutils}/bin/install -D -m 0644 ${fulcrum.tlsCert} ${fulcrumCert}
  '';

  manifest = {
    network = config.bcm.network;
  }
  // lib.optionalAttrs fulcrum.enable {
    electrum = {
      onionFile = onionFile "fulcrum";
      tcpPort = fulcrum.port;
      sslPort = fulcrum.sslPort;
      certFile = fulcrumCert;
    };
  }
  // lib.optionalAttrs lnd.enable {
    lnd = {
      onionFile = onionFile "lnd-rest";
      restPort = lnd.restPort;
      certFile = lnd.tlsCert;
      macaroonFile = lnd.macaroons.wallet.path;
      inherit (cfg.lndWallet) permissions;
    };
  }
  // lib.optionalAttrs monerod.enable {
    monero = {
      onionFile = onionFile "monerod-rpc";
      port = monerod.restrictedRpc.port;
    };
  };
  manifestFile = pkgs.writeText "bcm-connect.json" (builtins.toJSON manifest);
in
{
  imports = [
    ./core.nix
    ./operator.nix
    ./tor.nix
    ./fulcrum.nix
    ./lnd.nix
    ./monerod.nix
  ];

  options.bcm.connect = {
    enable = lib.mkOption {
      type = lib.types.bool;
      default = tor.enable && (fulcrum.enable || lnd.enable || monerod.enable);
      defaultText = lib.literalExpression "config.bcm.tor.enable && (fulcrum, lnd or monerod enabled)";
      description = ''
        Whether wallets may connect through onion services: LND's REST port gets an onion
        service of its own, a macaroon is baked for the Lightning wallet, Fulcrum's certificate
        is published, and the operator gets `bcm-connect-info` for `bcm-tools connect`.
      '';
    };

    publicDir = lib.mkOption {
      type = lib.types.str;
      readOnly = true;
      default = "/var/lib/bcm-wallets";
      description = "Where public material wallets pin (Fulcrum's certificate) is published, world-readable.";
    };

    lndWallet.permissions = lib.mkOption {
      type = lib.types.listOf (lib.types.strMatching "[a-z]+:[a-z]+");
      default = [
        "address:read"
        "address:write"
        "info:read"
        "invoices:read"
        "invoices:write"
        "offchain:read"
        "offchain:write"
        "onchain:read"
        "onchain:write"
        "peers:read"
        "peers:write"
      ];
      description = ''
        What the Lightning wallet's macaroon (Zeus) may do: receive and pay, on chain and off,
        and manage peers and channels. Never `info:write` (stopping LND), `macaroon:*` (minting
        other macaroons), `message:*` or `signer:*` (signing with the node's keys).
      '';
    };

    infoFile = lib.mkOption {
      type = lib.types.str;
      readOnly = true;
      default = "${manifestFile}";
      defaultText = lib.literalMD "the rendered manifest";
      description = "The JSON manifest `bcm-connect-info` prints.";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = tor.enable;
        message = "bcm.connect needs Tor: wallets reach the node through onion services. Set bcm.tor.enable = true or bcm.connect.enable = false.";
      }
    ];

    bcm.tor.onionServices.lnd-rest = lib.mkIf lnd.enable {
      map = [
        {
          port = lnd.restPort;
          target.port = lnd.restPort;
        }
      ];
    };

    # The operator reads it to build the wallet's URI; it is a credential, mode 0640.
    bcm.lnd.macaroons.wallet = lib.mkIf lnd.enable {
      user = "root";
      group = operatorGroup;
      inherit (cfg.lndWallet) permissions;
    };

    systemd.tmpfiles.rules = [ "d ${cfg.publicDir} 0755 root root - -" ];

    # "+": root copies the certificate out of Fulcrum's data directory after each start.
    systemd.services = lib.mkIf fulcrum.enable { fulcrum.serviceConfig.ExecStartPost = [ "+${publishFulcrumCert}" ]; };

    bcm.operator.tools = [
      (pkgs.writeShellScriptBin "bcm-connect-info" ''
        exec ${pkgs.coreutils}/bin/cat ${manifestFile}
      '')
    ];
  };
}
