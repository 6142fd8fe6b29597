# The flake's `nixosModules`: `default` imports everything; each service module can also be
# used alone and brings in what it depends on (core, operator, Tor, bitcoind) through imports.
{
  default = ./default.nix;
  core = ./core.nix;
  operator = ./operator.nix;
  tor = ./tor.nix;
  bitcoind = ./bitcoind.nix;
  fulcrum = ./fulcrum.nix;
  lnd = ./lnd.nix;
  monerod = ./monerod.nix;
  kafka = ./kafka.nix;
  events = ./events.nix;
  secrets = ./secrets.nix;
  monitoring = ./monitoring.nix;
  connect = ./connect.nix;
}
