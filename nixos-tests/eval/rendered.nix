# Every file the modules render into the store, found by following the string context of what
# the system would contain (units, tmpfiles, users and their packages, system packages) (the stub pkgs write files with builtins.toFile), then the store paths
# named inside those files. Returns a list of { path; name; text; }.
{ lib, config }:
let
  stubHash = "00000000000000000000000000000000";

  # All strings reachable from a value; derivation-like attrsets contribute their outPath only.
  strings =
    value:
    if lib.isString value then
      [ value ]
    else if lib.isList value then
      lib.concatMap strings value
    else if lib.isAttrs value then
      (if value ? outPath then [ (toString value.outPath) ] else lib.concatMap strings (lib.attrValues value))
    else
      [ ];

  roots = lib.concatMap strings [
    config.systemd.services
    config.systemd.tmpfiles.rules
    config.users.users
    config.environment.systemPackages
  ];

  contextPaths = lib.unique (lib.concatMap (s: lib.attrNames (builtins.getContext s)) roots);

  readStorePath = path: builtins.readFile (builtins.appendContext path { ${path} = { path = true; }; });

  referencesIn =
    text:
    let
      matches = lib.filter lib.isList (builtins.split "(/nix/store/[a-z0-9]{32}-[^/[:space:]\"';:)]+)" text);
    in
    lib.filter (p: !(lib.hasPrefix "/nix/store/${stubHash}" p)) (map lib.head matches);

  closure = builtins.genericClosure {
    startSet = map (path: { key = path; }) contextPaths;
    operator = item: map (path: { key = path; }) (referencesIn (readStorePath item.key));
  };
in
map (item: {
  path = item.key;
  # Store path names are "<hash>-<name>".
  name = lib.concatStringsSep "-" (lib.tail (lib.splitString "-" (baseNameOf item.key)));
  text = readStorePath item.key;
}) closure
