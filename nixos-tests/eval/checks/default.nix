# The registry of checks run on every host. A new module adds its check file here (one line);
# each file is a function of the context built in ../eval.nix returning a list of results, and
# checks only what its module enabled.
[
  ./generic.nix
  ./secrets.nix
  ./bitcoind.nix
  ./tor.nix
  ./fulcrum.nix
  ./lnd.nix
  ./lnd-backups.nix
  ./monerod.nix
  ./kafka.nix
  ./events.nix
  ./operator.nix
  ./operator-secrets.nix
  ./monitoring.nix
  ./connect.nix
]
