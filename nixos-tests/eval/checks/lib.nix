# Helpers for the check files.
{ lib, rendered }:
rec {
  # The rendered file called `name` (the part of the store path after the hash).
  file =
    name:
    let
      found = lib.filter (f: f.name == name) rendered;
    in
    if found == [ ] then { text = ""; missing = true; } else lib.head found;

  lines = name: lib.splitString "\n" (file name).text;
  hasLine = name: line: lib.elem line (lines name);
  contains = name: fragment: lib.hasInfix fragment (file name).text;

  # Whether an option still has its module default (the host did not set it).
  isDefault = option: option.highestPrio >= 1500;

  under = dir: path: lib.hasPrefix "${dir}/" path;

  # The RPC calls bitcoin.conf whitelists for `user` (bitcoind intersects repeated lines; none: [ ]).
  whitelistOf =
    user:
    let
      prefix = "rpcwhitelist=${user}:";
      entries = map (l: lib.filter (m: m != "") (lib.splitString "," (lib.removePrefix prefix l))) (
        lib.filter (lib.hasPrefix prefix) (lines "bitcoin.conf")
      );
    in
    if entries == [ ] then [ ] else lib.foldl' lib.intersectLists (lib.head entries) (lib.tail entries);
}
