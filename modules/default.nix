# Every bcm module. Adding a module is one line here and one in flake-modules.nix.
{
  imports = [
    ./core.nix
    ./operator.nix
    ./tor.nix
    ./bitcoind.nix
    ./fulcrum.nix
    ./lnd.nix
    ./lnd-backups.nix
    ./monerod.nix
    ./kafka.nix
    ./events.nix
    ./secrets.nix
    ./monitoring.nix
    ./connect.nix
  ];
}
